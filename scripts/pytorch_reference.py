#!/usr/bin/env python3
"""meshcast's model in plain PyTorch: check meshcast's numbers, time PyTorch's step.

The architecture is written out here from the meshcast sources (src/model/), with no
meshcast code and no graph library: nn.Linear, SiLU, nn.LayerNorm (eps 1e-5),
index_select for gathers and index_add (or segment_reduce) for the edge -> node sums.
Module names equal meshcast's parameter names, so a checkpoint's safetensors loads with
load_state_dict(strict=True).

    python scripts/pytorch_reference.py check EXPORT_DIR
        EXPORT_DIR from `meshcast export-reference --checkpoint RUN_DIR --output-dir EXPORT_DIR`
        (or --synthetic-grid). Recomputes meshcast's output, loss and every parameter
        gradient on the same weights, graph and batch, in f32 (and in f64 as the exact
        reference), and one AdamW step; prints one line per tensor group; exit 1 when
        anything differs beyond the tolerances below, 2 for bad input.

    python scripts/pytorch_reference.py bench --meshcast target/release/meshcast \\
            --out-dir DIR -- [benchmark-graph-format flags]
        Runs `meshcast benchmark-graph-format` with those flags (or takes its report from
        --meshcast-report), then times PyTorch's training step on the same cases (each in
        a fresh process, same threads) and writes a report in the same JSON schema, then
        runs `meshcast compare-benchmarks pytorch.json meshcast.json`. Cases that meshcast
        ran on CUDA ("cuda", "cuda:N") run on that GPU here too (TF32 off, timed between
        torch.cuda.synchronize() calls, memory from torch.cuda.max_memory_allocated).

How close is close (f32 against f32, summed in different orders):
- per tensor group (the output; the loss; the gradients of each MLP owner such as
  `encoder` or `processor.3`): L2 = ||a - b||_2 / ||b||_2 over all the group's entries
  <= --tolerance (1e-5);
- per tensor: max-abs = max|a - b| / max|b| <= --tensor-tolerance (1e-4). Single
  ill-conditioned sums, e.g. the gradient of a LayerNorm bias summed over 10^4 edges,
  differ by up to ~2e-5 between PyTorch's own f32 and f64 results, so 1e-5 per entry
  would fail PyTorch against itself; the f64 columns show each side's distance from
  the float64 result;
- AdamW: meshcast's updated weights against torch.optim.AdamW run in float64 on the
  same gradients and state, within 2 f32 ulp of the weight + 1e-5 x the tensor's
  largest update per element; moments m and v within 1e-5 (max-abs).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import load_file

EDGE_SETS = ("grid2mesh", "mesh", "mesh2grid")
FORMATS = ("coo-replicated", "coo-shared", "csr-shared")
BENCH_LEARNING_RATE = 1e-4  # benchmark-graph-format's timed steps
BENCH_GRAD_CLIP = 1.0
# Verification of a timed case against meshcast's output on the same weights and batch:
# |a - b| <= ATOL_SCALE * max|b| + RTOL * |b| elementwise. (benchmark-graph-format's
# own formats are bit-identical and use atol 1e-6; across frameworks the summation
# orders differ, so the absolute part scales with the output.) The same on CUDA: TF32 is
# off there (use_cuda), so the GPU's f32 differs from meshcast's CPU f32 only in summation
# order (cuBLAS blocking, index_add's atomics), as PyTorch's CPU does; on the CPU the
# largest differences are ~1e-6 x max|output|, a tenth of this. bench --atol-scale loosens it.
RTOL, ATOL_SCALE = 1e-5, 1e-5


# ----------------------------------------------------------------------------- model


class MLP(nn.Module):
    """`in -> hidden (x hidden_layers, SiLU before each next layer) -> out`, then an
    optional LayerNorm (src/model/mlp.rs). The input is the concatenation of parts of
    widths `in_widths`; the first layer's weight is one matrix over all of them."""

    def __init__(self, in_widths, hidden, out, hidden_layers, layer_norm, eps):
        super().__init__()
        self.in_widths = list(in_widths)
        widths = [sum(in_widths)] + [hidden] * hidden_layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norm = nn.LayerNorm(out, eps=eps) if layer_norm else None

    def after_first_layer(self, h):
        for layer in self.layers[1:]:
            h = layer(F.silu(h))
        return self.norm(h) if self.norm is not None else h

    def forward(self, x):
        """On the concatenated input."""
        return self.after_first_layer(self.layers[0](x))

    def project(self, part, x):
        """Part `part` times its column block of the first weight, no bias."""
        o = sum(self.in_widths[:part])
        return F.linear(x, self.layers[0].weight[:, o : o + self.in_widths[part]])

    def forward_projected(self, projected):
        return self.after_first_layer(projected + self.layers[0].bias)

    def forward_parts(self, parts, split):
        """`parts` broadcast against each other on the leading dimensions. `split`: the
        "concat trick" (project each part, sum); else broadcast, concatenate, one call."""
        if split:
            s = self.project(0, parts[0])
            for i, p in enumerate(parts[1:], 1):
                s = s + self.project(i, p)
            return self.forward_projected(s)
        lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
        return self(torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], -1))


class EdgeSet:
    """One directed edge set: COO indices (int64), features, and the CSR by receiver."""

    def __init__(self, senders, receivers, features, n_senders, n_receivers, csr_edge_ids):
        self.senders, self.receivers, self.features = senders, receivers, features
        self.n_senders, self.n_receivers = n_senders, n_receivers
        self.csr_edge_ids = csr_edge_ids
        self.lengths = torch.bincount(receivers, minlength=n_receivers)

    def replicated(self, copies):
        """The block-diagonal batch graph of PyTorch Geometric: copy b offset by b * n."""
        def tile(index, n):
            return (index[None, :] + n * torch.arange(copies, device=index.device)[:, None]).reshape(-1)

        e = self.senders.numel()
        return EdgeSet(
            tile(self.senders, self.n_senders),
            tile(self.receivers, self.n_receivers),
            self.features.repeat(copies, 1),
            self.n_senders * copies,
            self.n_receivers * copies,
            tile(self.csr_edge_ids, e),
        )

    def to(self, device):
        """The same edge set on `device` (built on the host, where the CSR is checked)."""
        return EdgeSet(self.senders.to(device), self.receivers.to(device), self.features.to(device),
                       self.n_senders, self.n_receivers, self.csr_edge_ids.to(device))

    def bytes(self):
        return sum(t.numel() * t.element_size() for t in (self.senders, self.receivers, self.features))


class Graph:
    def __init__(self, grid_features, mesh_features, sets):
        self.grid_features, self.mesh_features = grid_features, mesh_features
        self.sets = sets  # name -> EdgeSet

    def __getattr__(self, name):
        if name in EDGE_SETS:
            return self.sets[name]
        raise AttributeError(name)

    def replicated(self, copies):
        return Graph(
            self.grid_features.repeat(copies, 1),
            self.mesh_features.repeat(copies, 1),
            {k: v.replicated(copies) for k, v in self.sets.items()},
        )

    def to(self, device):
        return Graph(self.grid_features.to(device), self.mesh_features.to(device),
                     {k: v.to(device) for k, v in self.sets.items()})

    def bytes(self, csr=False):
        b = sum(t.numel() * t.element_size() for t in (self.grid_features, self.mesh_features))
        b += sum(s.bytes() for s in self.sets.values())
        if csr:
            b += sum(s.csr_edge_ids.numel() * 8 + s.lengths.numel() * 8 for s in self.sets.values())
        return b


def sum_into_receivers(edges, messages, aggregation):
    """`[B, E, L] -> [B, n_receivers, L]`."""
    b, _, l = messages.shape
    if aggregation == "csr":
        lengths = edges.lengths.expand(b, -1)
        return torch.segment_reduce(
            messages.index_select(1, edges.csr_edge_ids), "sum", lengths=lengths, axis=1
        )
    out = messages.new_zeros(b, edges.n_receivers, l)
    return out.index_add(1, edges.receivers, messages)


class InteractionNetwork(nn.Module):
    """e' = e + MLP_e([e, h_s, h_r]); h_r' = h_r + MLP_n([h_r, sum of e' into r]);
    encoder only: h_s' = h_s + MLP_s(h_s) (src/model/interaction.rs)."""

    def __init__(self, latent, hidden_layers, update_senders, eps):
        super().__init__()
        def mlp(parts):
            return MLP([latent] * parts, latent, latent, hidden_layers, True, eps)

        self.edge_mlp = mlp(3)
        self.node_mlp = mlp(2)
        self.sender_mlp = mlp(1) if update_senders else None

    def forward(self, edges, senders, receivers, edge_latents, split, aggregation):
        m = self.edge_mlp
        if split:
            projected = (
                m.project(0, edge_latents)
                + m.project(1, senders).index_select(1, edges.senders)
                + m.project(2, receivers).index_select(1, edges.receivers)
            )
            update = m.forward_projected(projected)
        else:
            update = m.forward_parts(
                [
                    edge_latents,
                    senders.index_select(1, edges.senders),
                    receivers.index_select(1, edges.receivers),
                ],
                split=False,
            )
        new_edges = edge_latents + update
        aggregated = sum_into_receivers(edges, new_edges, aggregation)
        return receivers + self.node_mlp.forward_parts([receivers, aggregated], split), new_edges

    def update_senders(self, senders):
        return senders + self.sender_mlp(senders) if self.sender_mlp is not None else senders


class GraphCast(nn.Module):
    """Embedders, encoder (grid2mesh), processor (mesh) x num_gnn_layers, decoder
    (mesh2grid), output MLP (src/model/graphcast.rs)."""

    def __init__(self, cfg, node_features, edge_features, eps):
        super().__init__()
        l, h = cfg["latent_size"], cfg["mlp_hidden_layers"]
        def embedder(widths):
            return MLP(widths, l, l, h, True, eps)

        self.embed = nn.ModuleDict(
            OrderedDict(
                grid_nodes=embedder([cfg["grid_input_features"], node_features]),
                mesh_nodes=embedder([node_features]),
                grid2mesh=embedder([edge_features]),
                mesh=embedder([edge_features]),
                mesh2grid=embedder([edge_features]),
            )
        )
        self.encoder = InteractionNetwork(l, h, True, eps)
        self.processor = nn.ModuleList(
            InteractionNetwork(l, h, False, eps) for _ in range(cfg["num_gnn_layers"])
        )
        self.decoder = InteractionNetwork(l, h, False, eps)
        self.output = MLP([l], l, cfg["output_channels"], h, False, eps)
        self.split = False
        self.aggregation = "index-add"
        self.replicated = False
        self._replica = None

    def forward(self, graph, x):
        b, n, f = x.shape
        if self.replicated:
            if self._replica is None or self._replica[0] != (id(graph), b):
                self._replica = ((id(graph), b), graph.replicated(b))
            graph, x = self._replica[1], x.reshape(1, b * n, f)
        s, agg = self.split, self.aggregation
        grid = self.embed["grid_nodes"].forward_parts([x, graph.grid_features[None]], s)
        mesh = self.embed["mesh_nodes"](graph.mesh_features[None])
        g2m = self.embed["grid2mesh"](graph.grid2mesh.features[None])
        mesh, _ = self.encoder(graph.grid2mesh, grid, mesh, g2m, s, agg)
        grid = self.encoder.update_senders(grid)
        edges = self.embed["mesh"](graph.mesh.features[None])
        for block in self.processor:
            mesh, edges = block(graph.mesh, mesh, mesh, edges, s, agg)
        m2g = self.embed["mesh2grid"](graph.mesh2grid.features[None])
        grid, _ = self.decoder(graph.mesh2grid, mesh, grid, m2g, s, agg)
        out = self.output(grid)
        return out.reshape(b, n, -1) if self.replicated else out


def weighted_mse(pred, y, w, count):
    """src/train/loss.rs: sum(w * (pred - y)^2) / count."""
    return (w * (pred - y) ** 2).sum() / count


def configure(model, fmt, split):
    model.split = split
    model.replicated = fmt == "coo-replicated"
    model.aggregation = "csr" if fmt == "csr-shared" else "index-add"


# ----------------------------------------------------------------------------- loading


class BadInput(Exception):
    pass


def load_export(export_dir, names=None):
    """The sidecar and the tensors of an export (all, or those starting with `names`)."""
    export_dir = Path(export_dir)
    meta_path = export_dir / "reference.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{meta_path}: not a meshcast export ({e})")
    if meta.get("format_version") != 1:
        raise BadInput(f"{meta_path}: export format {meta.get('format_version')}, this script reads 1")
    tensors = {}
    with safe_open(str(export_dir / "reference.safetensors"), framework="np") as f:
        for k in f.keys():
            if names is None or k.startswith(names):
                tensors[k] = f.get_tensor(k)
    return meta, tensors


def graph_from(tensors, dtype):
    def t(k):
        return torch.from_numpy(tensors[k].astype(np.int64) if tensors[k].dtype == np.uint32 else tensors[k])

    counts = {
        "grid_nodes": tensors["graph.grid_nodes.features"].shape[0],
        "mesh_nodes": tensors["graph.mesh_nodes.features"].shape[0],
    }
    ends = {"grid2mesh": ("grid_nodes", "mesh_nodes"), "mesh": ("mesh_nodes", "mesh_nodes"),
            "mesh2grid": ("mesh_nodes", "grid_nodes")}
    sets = {}
    for s in EDGE_SETS:
        sets[s] = EdgeSet(
            t(f"graph.{s}.senders"),
            t(f"graph.{s}.receivers"),
            t(f"graph.{s}.features").to(dtype),
            counts[ends[s][0]],
            counts[ends[s][1]],
            t(f"graph.{s}.csr_edge_ids"),
        )
        offsets = t(f"graph.{s}.csr_offsets")
        if not torch.equal(offsets[1:] - offsets[:-1], sets[s].lengths):
            raise BadInput(f"graph.{s}: the CSR offsets do not match the COO receivers")
    return Graph(
        t("graph.grid_nodes.features").to(dtype), t("graph.mesh_nodes.features").to(dtype), sets
    )


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(meta):
    path = Path(meta["weights_file"])
    if not path.exists():
        raise BadInput(f"{path}: the weights the export refers to are missing")
    ck = meta.get("checkpoint")
    if ck and sha256(path) != ck["weights_sha256"]:
        raise BadInput(f"{path}: does not match the checkpoint sidecar's SHA-256 (checkpoint changed since the export?)")
    weights = load_file(str(path))
    missing = sorted(set(meta["parameters"]) - set(weights))
    if missing:
        raise BadInput(f"{path}: missing parameters {missing[:3]}")
    return weights


def build_model(meta, weights, dtype):
    model = GraphCast(meta["model"], meta["node_features"], meta["edge_features"], meta["layer_norm_eps"])
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)  # names and shapes must match exactly
    return model.to(dtype)


# ----------------------------------------------------------------------------- check


def rel_err(a, b):
    """max|a - b| / max|b| (0 when both are 0)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def rel_l2(a, b):
    """||a - b||_2 / ||b||_2 in f64 (0 when both are 0)."""
    a, b = a.double(), b.double()
    nb, nd = b.norm().item(), (a - b).norm().item()
    if nb == 0.0:
        return 0.0 if nd == 0.0 else float("inf")
    return nd / nb


def group_of(name):
    """A parameter's group: its MLP's owner (embed.mesh, encoder, processor.3, ...)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("embed", "processor") else parts[0]


def forward_backward(model, graph, batch, fmt, split):
    configure(model, fmt, split)
    model.zero_grad(set_to_none=True)
    out = model(graph, batch["x"])
    loss = weighted_mse(out, batch["y"], batch["w"], batch["count"])
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), grads


def adamw_step(meta, weights, grads, moments, dtype):
    """torch.optim.AdamW from the export's state (weights, moments, step count) with
    `grads`, after torch's clip_grad_norm_ at the export's clip, in `dtype`."""
    s = meta["step"]
    names = meta["parameters"]

    def tensor(a):
        return torch.as_tensor(np.ascontiguousarray(a)).to(dtype).clone()

    params = [nn.Parameter(tensor(weights[n])) for n in names]
    unused = set(meta.get("no_gradient", []))
    for p, n in zip(params, names):
        # AdamW skips a parameter without a gradient, in meshcast as in torch.
        p.grad = None if n in unused else grads[n].to(dtype).clone()
    if s["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(params, s["grad_clip"])
    a = s["adamw"]
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"],
                            weight_decay=a["weight_decay"])
    if moments is not None:
        for p, n in zip(params, names):
            opt.state[p] = {
                "step": torch.tensor(float(s["step_before"])),
                "exp_avg": tensor(moments[f"m.{n}"]),
                "exp_avg_sq": tensor(moments[f"v.{n}"]),
            }
    opt.step()
    out = {}
    for p, n in zip(params, names):
        st = opt.state.get(p) or {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        out[n] = (p.detach(), st["exp_avg"], st["exp_avg_sq"])
    return out


def ulp32(x):
    """The spacing of f32 numbers at |x|, in f64."""
    a = x.to(torch.float32).abs()
    return (torch.nextafter(a, torch.tensor(float("inf"))) - a).double()


def step_errors(after, ref, before, tol):
    """Updated weights `after` (and moments) against the f64 reference step `ref`.
    Weights: the largest difference in units of the f32 spacing at the weight (ulp), and
    relative to the largest update of the tensor; an element passes within 2 ulp (an f32
    AdamW rounds twice at the weight's magnitude: after the decay and after the update,
    whatever the update's accuracy) plus `tol` x the largest update. A missing weight
    decay (lr x wd x |w|, ~8 ulp at lr 1e-4) or a wrong bias correction fails.
    Returns (ulps, update error, m error, v error, passed, worst tensor)."""
    worst = (0.0, 0.0, 0.0, 0.0, True, "")
    ulps, upd, em, ev, ok, name = worst
    for n, (w, m, v) in after.items():
        w_ref, m_ref, v_ref = ref[n]
        diff = (w.double() - w_ref.double()).abs()
        delta = (w_ref.double() - before[n].double()).abs().max().item()
        u = ulp32(w_ref)
        t_ulps = (diff / u).max().item()
        t_upd = diff.max().item() / delta if delta > 0 else (0.0 if diff.max().item() == 0 else float("inf"))
        if not bool((diff <= 2 * u + tol * delta).all()):
            ok = False
        if t_upd > upd:
            name = n
        ulps, upd = max(ulps, t_ulps), max(upd, t_upd)
        em, ev = max(em, rel_err(m, m_ref)), max(ev, rel_err(v, v_ref))
    return ulps, upd, em, ev, ok and em <= tol and ev <= tol, name


def run_check(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    meta, t = load_export(args.export_dir)
    weights = load_weights(meta)
    moments = None
    opt_file = meta["step"].get("optimizer_file")
    if opt_file:
        ck = meta["checkpoint"]
        if sha256(opt_file) != ck["optimizer_sha256"]:
            raise BadInput(f"{opt_file}: does not match the checkpoint sidecar's SHA-256")
        moments = load_file(opt_file)
    cfg = meta["model"]
    fmt = args.format
    if fmt == "auto":
        fmt = ("coo-replicated" if cfg["batching"] == "replicated"
               else "csr-shared" if cfg["aggregation"] == "csr" else "coo-shared")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("concat", "split"):
            raise BadInput(f"unknown variant '{v}' (expected concat, split)")

    mc = {
        "output": torch.from_numpy(t["meshcast.output"]),
        "loss": torch.from_numpy(t["meshcast.loss"]).reshape(()),
        "grads": {n: torch.from_numpy(t[f"grad.{n}"]) for n in meta["parameters"]},
    }
    results = {}
    for dtype in (torch.float64, torch.float32):
        graph = graph_from(t, dtype)
        batch = {k: torch.from_numpy(t[f"batch.{k}"]).to(dtype) for k in "xyw"}
        batch["count"] = meta["batch"]["count"]
        model = build_model(meta, weights, dtype)
        for v in variants if dtype == torch.float32 else variants[:1]:
            results[(dtype, v)] = forward_backward(model, graph, batch, fmt, v == "split")
    exact = results[(torch.float64, variants[0])]

    print(f"export: {args.export_dir} ({meta['source']}; {meta['grid']}, mesh level {meta['mesh_level']}, "
          f"batch {meta['batch']['size']} {meta['batch']['split']}, {meta['parameter_count']} parameters, "
          f"latent {cfg['latent_size']}, {cfg['num_gnn_layers']} processor layers, meshcast {cfg['batching']}/{cfg['aggregation']})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, PyTorch format {fmt}. Per group: "
          f"L2 = ||a - b|| / ||b|| over all its tensors (tolerance {args.tolerance:g}); per tensor: "
          f"max-abs = max|a - b| / max|b| (tolerance {args.tensor_tolerance:g}); f64 = PyTorch in float64")
    groups = OrderedDict()
    groups["output"] = ["output"]
    groups["loss"] = ["loss"]
    for n in meta["parameters"]:
        groups.setdefault(f"grad {group_of(n)}", []).append(n)

    def pick(res, key):
        out, loss, grads = res
        return out if key == "output" else loss if key == "loss" else grads[key]

    def mc_pick(key):
        return mc["output"] if key == "output" else mc["loss"] if key == "loss" else mc["grads"][key]

    def flat(get, keys):
        return torch.cat([get(k).reshape(-1).double() for k in keys])

    header = f"{'group':<24} {'tensors':>7} " + " ".join(f"{'L2 vs torch-f32 ' + v:>22}" for v in variants)
    header += f" {'L2 meshcast-f64':>16} {'L2 torch32-f64':>15}  {'worst tensor max-abs':>20} (meshcast-f64, torch32-f64) tensor"
    print(header)
    failed = []
    worst_l2 = worst_t = 0.0
    for g, keys in groups.items():
        mc_flat = flat(mc_pick, keys)
        ex_flat = flat(lambda k: pick(exact, k), keys)
        t32 = {v: flat(lambda k: pick(results[(torch.float32, v)], k), keys) for v in variants}
        l2 = {v: rel_l2(mc_flat, t32[v]) for v in variants}
        l2_mc64, l2_t64 = rel_l2(mc_flat, ex_flat), rel_l2(t32[variants[0]], ex_flat)
        per_tensor = [
            (max(rel_err(mc_pick(k), pick(results[(torch.float32, v)], k)) for v in variants), k) for k in keys
        ]
        e_t, k_t = max(per_tensor)
        e_mc64 = rel_err(mc_pick(k_t), pick(exact, k_t))
        e_t64 = rel_err(pick(results[(torch.float32, variants[0])], k_t), pick(exact, k_t))
        worst_l2, worst_t = max(worst_l2, *l2.values()), max(worst_t, e_t)
        ok = max(l2.values()) <= args.tolerance and e_t <= args.tensor_tolerance
        if not ok:
            failed.append(g)
        cols = " ".join(f"{l2[v]:>22.3e}" for v in variants)
        print(f"{g:<24} {len(keys):>7} {cols} {l2_mc64:>16.3e} {l2_t64:>15.3e}  {e_t:>20.3e} ({e_mc64:.1e}, {e_t64:.1e}) "
              f"{k_t}{'' if ok else '  MISMATCH'}")

    # One optimizer step. (a) meshcast's own gradients into torch.optim.AdamW: the
    # optimizer formula alone. (b) torch's gradients: the whole training step.
    s = meta["step"]
    print(f"AdamW step: lr {s['lr']:.4e}, betas ({s['adamw']['beta1']}, {s['adamw']['beta2']}), eps {s['adamw']['eps']:g}, "
          f"weight decay {s['adamw']['weight_decay']}, step {s['step_before']} -> {s['step_before'] + 1}, "
          f"clip {s['grad_clip']} (meshcast's gradient norm {s['grad_norm']:.6g}, clipped: {s['clipped']}), "
          f"moments {'from the checkpoint' if moments is not None else 'zero'}")
    names = meta["parameters"]
    before = {n: torch.from_numpy(np.ascontiguousarray(weights[n])) for n in names}
    mc_after = {n: (torch.from_numpy(t[f"step.weight.{n}"]), torch.from_numpy(t[f"step.m.{n}"]),
                    torch.from_numpy(t[f"step.v.{n}"])) for n in names}
    ref = adamw_step(meta, weights, mc["grads"], moments, torch.float64)
    torch32 = adamw_step(meta, weights, mc["grads"], moments, torch.float32)
    torch_own = adamw_step(meta, weights, results[(torch.float32, variants[0])][2], moments, torch.float32)
    print("  against torch.optim.AdamW in f64 on meshcast's gradients; weights pass within 2 ulp + "
          f"{args.tolerance:g} x the tensor's largest update, moments within {args.tolerance:g}")
    for label, after, gate in (
        ("adamw meshcast", mc_after, True),
        ("adamw torch-f32", torch32, False),
        ("step w/ torch-f32 grads", torch_own, False),
    ):
        ulps, upd, em, ev, ok, worst_name = step_errors(after, ref, before, args.tolerance)
        if gate and not ok:
            failed.append(label)
        note = "" if gate else ("  (peer)" if label == "adamw torch-f32"
                                 else "  (informational: includes the gradient differences)")
        print(f"{label:<26} {len(names):>7} weights {ulps:.2f} ulp max, {upd:.3e} of the update; "
              f"m {em:.3e}, v {ev:.3e}  {worst_name}{'' if ok or not gate else '  MISMATCH'}{note}")
    if failed:
        print(f"FAIL: {len(failed)} group(s) beyond tolerance: {', '.join(failed)}")
        return 1
    print(f"OK: every group within {args.tolerance:g} (largest L2 {worst_l2:.3e}), every tensor within "
          f"{args.tensor_tolerance:g} (largest max-abs {worst_t:.3e}), AdamW step as torch.optim.AdamW")
    return 0


# ----------------------------------------------------------------------------- bench


def proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def parse_device(name):
    """meshcast's device string (`cpu`, `cuda`, `cuda:N`) as a torch.device; `cuda` is
    ordinal 0, as in meshcast (src/device/mod.rs). None for anything else."""
    if name == "cpu":
        return torch.device("cpu")
    kind, _, ordinal = name.partition(":")
    if kind in ("cuda", "gpu") and (ordinal == "" or ordinal.isdigit()):
        return torch.device("cuda", int(ordinal or 0))
    return None


def cuda_missing(device):
    """Why PyTorch cannot run on CUDA device `device` (None when it can)."""
    build = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda} build" if torch.version.cuda
                                               else "a CPU-only build")
    if not torch.cuda.is_available():
        return f"PyTorch sees no CUDA device ({build})"
    if device.index >= torch.cuda.device_count():
        return f"PyTorch sees {torch.cuda.device_count()} CUDA device(s), no {device} ({build})"
    return None


def use_cuda(device):
    """Makes `device` current, with TF32 off: by default cuDNN (and, in older torch or
    with set_float32_matmul_precision, cuBLAS) may run f32 work in TF32 (10-bit mantissa),
    whose ~1e-3 errors would fail the 1e-5 verification against meshcast's f32 and time a
    cheaper computation than meshcast's. With both off the GPU does plain f32, like the
    CPU, so the CPU tolerances hold (only summation orders differ, as on the CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(device)


def summary(samples):
    s = sorted(samples)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_s": med, "min_s": s[0], "max_s": s[-1], "samples_s": list(samples)}


def run_bench_case(args):
    """One case in this (fresh) process; prints its result as JSON on the last line."""
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dev = parse_device(args.device)
    if dev is None:
        raise BadInput(f"device {args.device}: expected cpu, cuda or cuda:N")
    cuda = dev.type == "cuda"
    if cuda:
        missing = cuda_missing(dev)
        if missing:
            raise BadInput(f"device {args.device}: {missing}")
        use_cuda(dev)
    meta, t = load_export(args.export, names=("graph.", "batch.", "meshcast."))
    weights = load_weights(meta)
    gc.collect()
    base = proc_status()
    graph = graph_from(t, torch.float32)
    batch = {k: torch.from_numpy(t[f"batch.{k}"]) for k in "xyw"}
    if cuda:
        # The batch is on the device before the baseline, as in meshcast's CUDA cases;
        # graph and model after it. (The CUDA context is not in memory_allocated, nor
        # in meshcast's pool figure.)
        batch = {k: v.to(dev) for k, v in batch.items()}
        torch.cuda.synchronize(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
        graph = graph.to(dev)
    count = meta["batch"]["count"]
    model = build_model(meta, weights, torch.float32).to(dev)
    configure(model, args.format, args.variant == "split")
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)

    out = model(graph, batch["x"])
    loss = weighted_mse(out, batch["y"], batch["w"], count)
    ref_out = torch.from_numpy(t["meshcast.output"])
    ref_loss = float(t["meshcast.loss"].reshape(()))
    d = (out.detach().cpu().double() - ref_out.double()).abs()
    max_diff = d.max().item()
    atol = args.atol_scale * ref_out.double().abs().max().item()
    out_ok = bool((d <= atol + RTOL * ref_out.double().abs()).all())
    loss_diff = abs(loss.item() - ref_loss)
    verified = bool(out_ok and loss_diff <= RTOL * abs(ref_loss) and np.isfinite(loss.item()))
    graph_bytes = graph.bytes(csr=args.format == "csr-shared")
    if model.replicated:
        graph_bytes += model._replica[1].bytes()
    del out, loss
    result = {
        "verification": {"verified": verified, "max_output_diff": max_diff, "loss_diff": loss_diff,
                         "rtol": RTOL, "atol": atol, "reference": "coo-shared"},
        "parameters": n_params,
        "graph_bytes": graph_bytes,
        "timings": None,
    }
    if cuda:
        result["device"] = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev),
                            "cuda_runtime": torch.version.cuda, "tf32": False}
    if not verified:
        print(json.dumps(result))
        return 0

    opt = torch.optim.AdamW(params, lr=BENCH_LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    last = [float("nan")]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = weighted_mse(model(graph, batch["x"]), batch["y"], batch["w"], count)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, BENCH_GRAD_CLIP)
        opt.step()
        last[0] = loss.item()

    def sync():
        """CUDA runs asynchronously: the host clock is read only with the GPU idle, so a
        sample is one whole step and nothing else (the step's closing loss.item() would
        wait for the stream too, but the timing should not rest on that)."""
        if cuda:
            torch.cuda.synchronize(dev)

    gc.collect()
    reset_peak_rss()
    if cuda:
        # From the warm-up on, as the RSS peak above and meshcast's pool peak.
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    end = proc_status()
    if cuda:
        cuda_peak = torch.cuda.max_memory_allocated(dev)
        cuda_reserved = torch.cuda.max_memory_reserved(dev)
    fwd = []
    for _ in range(args.forward_repeats):
        sync()
        t0 = time.perf_counter()
        loss = weighted_mse(model(graph, batch["x"]), batch["y"], batch["w"], count)
        loss.item()
        sync()
        fwd.append(time.perf_counter() - t0)
        del loss
    result["timings"] = {"step": summary(times), "forward": summary(fwd), "final_loss": last[0]}
    if cuda:
        # Bytes of live tensors at the peak (the caching allocator's count, rounded to its
        # 512-byte blocks), the device-side twin of meshcast's CUDA pool peak; the reserved
        # peak (what the allocator held from the driver) is recorded beside it.
        result["memory"] = {"memory_method": "torch.cuda.max_memory_allocated", "baseline": cuda_base,
                            "peak": cuda_peak, "max_memory_reserved": cuda_reserved}
        print(json.dumps(result))
        return 0
    # Peak anonymous memory: VmHWM minus the file-backed pages (libraries paged in),
    # against anonymous memory before the graph and model existed.
    peak_anon = end["VmHWM"] - end["RssFile"] - end["RssShmem"]
    result["memory"] = {"baseline": base["RssAnon"], "peak": peak_anon,
                        "vm_hwm": end["VmHWM"], "rss_file": end["RssFile"], "baseline_vm_rss": base["VmRSS"]}
    print(json.dumps(result))
    return 0


def cpu_info():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model, flags, cores, phys = None, set(), set(), None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "model name" and model is None:
            model = v
        elif k == "flags" and not flags:
            flags = set(v.split())
        elif k == "physical id":
            phys = v
        elif k == "core id":
            cores.add((phys, v))
    mem = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    simd_names = ["sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c",
                  "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"]
    simd = [s for s in simd_names if s.replace(".", "_") in flags or s in flags]
    return {
        "model": model,
        "logical_cores": len(os.sched_getaffinity(0)),
        "physical_cores": len(cores) or None,
        "simd": simd,
        "arch": platform.machine(),
        "os": platform.system().lower(),
        "memory_total_bytes": mem,
    }, flags


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def nvidia_driver_version():
    """The NVIDIA kernel module's version, read as meshcast reads it (src/bench/machine.rs)."""
    try:
        line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return next((w for w in line.split() if w[:1].isdigit() and "." in w), None)


def cuda_driver_api_version():
    """The CUDA version the driver supports (cuDriverGetVersion), as in meshcast's report;
    torch.version.cuda is the runtime torch was built with, recorded in `meshcast.version`."""
    try:
        v = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except (OSError, AttributeError):
        pass
    return None


def gpu_info():
    """Every CUDA device torch sees, in meshcast's GpuInfo keys. Called after the cases
    ran: the CUDA context this opens in this process would hold GPU memory beside them."""
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        try:
            free = torch.cuda.mem_get_info(i)[0]
        except RuntimeError:
            free = None
        gpus.append({"ordinal": i, "name": torch.cuda.get_device_name(i),
                     "compute_capability": f"{p.major}.{p.minor}", "memory_total_bytes": p.total_memory,
                     "memory_free_bytes": free})
    return gpus


def edge_updates(g, layers):
    return g["grid2mesh_edges"] + layers * g["mesh_edges"] + g["mesh2grid_edges"]


def run_bench(args):
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meshcast = str(Path(args.meshcast).resolve())
    if args.meshcast_report:
        mc_path = Path(args.meshcast_report)
    else:
        flags = [a for a in args.bench_args if a != "--"]
        cmd = [meshcast, "benchmark-graph-format", "--no-progress", "--output-dir", str(out_dir), *flags]
        print("+", " ".join(cmd), flush=True)
        before = set(out_dir.glob("*.json"))
        subprocess.run(cmd, check=False)
        new = sorted(set(out_dir.glob("*.json")) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            print("error: benchmark-graph-format wrote no report", file=sys.stderr)
            return 1
        mc_path = new[-1]
    mc = json.loads(mc_path.read_text())
    threads = args.threads or mc["backend"].get("cpu_threads") or os.cpu_count()
    settings = mc["settings"]
    cpu, flags = cpu_info()
    cases = []
    exports = {}
    cpu_cases = cuda_cases = device_errors = 0
    tmp = tempfile.TemporaryDirectory(prefix="meshcast-torch-bench-")
    try:
        for case in mc["cases"]:
            cfg = case["config"]
            res = {
                "config": cfg,
                "graph": dict(case["graph"]),
                "model": dict(case["model"]),
                "verification": None,
                "timings": None,
                "memory": None,
                "predicted_peak": None,
                "error": None,
            }
            cases.append(res)
            label = f"{cfg['grid']} b{cfg['batch_size']} {cfg['format']}"
            unsupported = []
            if cfg.get("precision", "f32") not in ("f32", "off"):
                unsupported.append(f"precision {cfg['precision']}")
            if cfg.get("checkpointing"):
                unsupported.append("checkpointing")
            if cfg.get("patches", 1) != 1:
                unsupported.append("patches")
            dev = parse_device(cfg["device"])
            if dev is None:
                unsupported.append(f"device {cfg['device']}")
            if unsupported:
                res["error"] = f"not run by the PyTorch reference ({', '.join(unsupported)})"
                print(f"{label}: skipped ({res['error']})", flush=True)
                continue
            if dev.type == "cuda":
                label += f" {cfg['device']}"
                cuda_cases += 1
                missing = cuda_missing(dev)
                if missing:
                    res["error"] = f"device {cfg['device']}: {missing}"
                    print(f"{label}: error: {res['error']}", flush=True)
                    device_errors += 1
                    continue
            else:
                cpu_cases += 1
            key = (cfg["grid"], cfg["mesh_level"], cfg["batch_size"], cfg["latent_size"], cfg["num_gnn_layers"],
                   cfg["mlp_hidden_layers"], cfg["input_steps"], cfg["channels"])
            if key not in exports:
                d = Path(tmp.name) / f"case{len(exports)}"
                grid = cfg["grid"].removeprefix("global-")
                cmd = [meshcast, "-q", "export-reference", "--synthetic-grid", grid,
                       "--mesh-level", str(cfg["mesh_level"]), "--batch-size", str(cfg["batch_size"]),
                       "--latent-size", str(cfg["latent_size"]), "--num-gnn-layers", str(cfg["num_gnn_layers"]),
                       "--mlp-hidden-layers", str(cfg["mlp_hidden_layers"]), "--input-steps", str(cfg["input_steps"]),
                       "--channels", str(cfg["channels"]), "--seed", str(settings["seed"]),
                       "--no-graph-cache", "--device", "cpu", "--output-dir", str(d)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                exports[key] = (d, r.stderr.strip() if r.returncode else None)
            d, err = exports[key]
            if err:
                res["error"] = f"export-reference failed: {err}"
                print(f"{label}: {res['error']}", flush=True)
                continue
            steps = len(case["timings"]["step"]["samples_s"]) if case.get("timings") else settings["timed_steps"]
            cmd = [sys.executable, str(Path(__file__).resolve()), "bench-case", "--export", str(d),
                   "--format", cfg["format"], "--variant", args.variant, "--threads", str(threads),
                   "--device", cfg["device"], "--atol-scale", str(args.atol_scale),
                   "--warmup", str(settings["warmup_steps"]), "--steps", str(steps),
                   "--forward-repeats", str(settings["forward_repeats"])]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                res["error"] = f"PyTorch case failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
                print(f"{label}: {res['error']}", flush=True)
                continue
            one = json.loads(r.stdout.strip().splitlines()[-1])
            res["verification"] = one["verification"]
            res["model"] = {"parameters": one["parameters"], "bytes": one["parameters"] * 4}
            res["graph"]["case_bytes"] = one["graph_bytes"]
            wb = one["parameters"] * 4
            if one["timings"]:
                tm = one["timings"]
                med = tm["step"]["median_s"]
                res["timings"] = {
                    "forward": tm["forward"],
                    "step": tm["step"],
                    "warmup_steps": settings["warmup_steps"],
                    "samples_per_s": cfg["batch_size"] / med,
                    "edges_per_s": cfg["batch_size"] * edge_updates(res["graph"], cfg["num_gnn_layers"]) / med,
                    "final_loss": tm["final_loss"],
                }
                m = one["memory"]
                parts = wb * 4 + one["graph_bytes"]
                res["memory"] = {
                    "weights": wb, "optimizer_state": 2 * wb, "gradients": wb, "graph": one["graph_bytes"],
                    "baseline": m["baseline"], "peak": m["peak"],
                    "activations": max(0, m["peak"] - m["baseline"] - parts),
                }
                # CUDA cases name their own method (m["memory_method"] replaces this one).
                res["pytorch"] = {"memory_method": "peak anonymous RSS", **m}
                if "device" in one:
                    res["pytorch"]["device"] = one["device"]
                print(f"{label}: step {med * 1e3:.1f} ms ({tm['step']['min_s'] * 1e3:.1f}..{tm['step']['max_s'] * 1e3:.1f}), "
                      f"peak {(m['peak'] - m['baseline']) / 2**20:.1f} MiB, verified (max diff {one['verification']['max_output_diff']:.1e})",
                      flush=True)
            else:
                print(f"{label}: NOT verified against meshcast's output (max diff {one['verification']['max_output_diff']:.3e})", flush=True)
    finally:
        tmp.cleanup()

    # The GPUs as meshcast's report lists them: when it ran on CUDA or lists GPUs (a
    # CUDA build), so that compare-benchmarks sees the same machine; else as before.
    gpus = gpu_info() if torch.cuda.is_available() and (cuda_cases or mc["machine"].get("gpus")) else []
    version = f"pytorch-reference (torch {torch.__version__}"
    version += f", CUDA runtime {torch.version.cuda})" if gpus and torch.version.cuda else ")"
    memory = []
    if cpu_cases or not cuda_cases:
        memory.append(("memory: peak anonymous RSS (VmHWM reset via /proc/self/clear_refs, minus file-backed pages) "
                       "above the anonymous RSS before graph and model"))
    if cuda_cases:
        memory.append(("CUDA cases: " if cpu_cases else "memory: ")
                      + "torch.cuda.max_memory_allocated (peak reset before the warm-up steps) above "
                        "torch.cuda.memory_allocated with the batch on the device, before graph and model; "
                        "TF32 off (torch.backends.cuda.matmul and cudnn allow_tf32 = False); steps timed "
                        "between torch.cuda.synchronize() calls; meshcast's reference output computed on the CPU")
    atol_text = f"{args.atol_scale:g}".replace("e-0", "e-")  # 1e-5, as the text always said
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = {
        "schema_version": mc["schema_version"],
        "kind": mc["kind"],
        "label": f"pytorch-{args.variant}",
        "created_utc": created,
        "command": sys.argv,
        "meshcast": {
            "version": version,
            "git_revision": git_revision(),
            "git_revision_source": "run time (scripts/pytorch_reference.py: git rev-parse --short HEAD)",
            "profile": "release",
        },
        "backend": {
            "cuda": bool(gpus), "metal": False, "mkl": bool(torch.backends.mkl.is_available()), "accelerate": False,
            "with_avx": "avx2" in flags, "with_f16c": "f16c" in flags, "with_neon": False, "with_simd128": False,
            "cpu_threads": threads,
        },
        "machine": {
            "hostname": socket.gethostname(),
            "cpu": cpu,
            "gpu_driver_version": nvidia_driver_version() if gpus else None,
            "cuda_driver_api_version": cuda_driver_api_version() if gpus else None,
            "gpus": gpus,
        },
        "settings": {
            **settings,
            "learning_rate": BENCH_LEARNING_RATE,
            "rtol": RTOL,
            "atol": args.atol_scale,
            "data": (f"meshcast export-reference --synthetic-grid (seed {settings['seed']}): same parameters as "
                     "meshcast's cases; PyTorch's output verified against meshcast's (coo-shared) on that batch "
                     f"with rtol 1e-5 and atol {atol_text} x max|meshcast output| (settings.atol is that "
                     f"factor); {args.variant} edge-MLP first layer; {'; '.join(memory)}, one fresh process per case"),
        },
        "cases": cases,
    }
    stamp = created.replace("-", "").replace(":", "")
    path = out_dir / f"pytorch-{args.variant}_{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"PyTorch report: {path}\nmeshcast report: {mc_path}", flush=True)
    cmp = [meshcast, "compare-benchmarks", str(path), str(mc_path)]
    print("+", " ".join(cmp), flush=True)
    subprocess.run(cmp, check=False)
    unverified = [c for c in cases if c["verification"] and not c["verification"]["verified"]]
    return 1 if unverified or device_errors else 0


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="compare meshcast's export with PyTorch (exit 1 on mismatch)")
    c.add_argument("export_dir")
    c.add_argument("--tolerance", type=float, default=1e-5,
                   help="per tensor group: ||a - b|| / ||b|| over the group, and the AdamW step")
    c.add_argument("--tensor-tolerance", type=float, default=1e-4,
                   help="per tensor: max|a - b| / max|b| (single ill-conditioned sums, e.g. a bias "
                        "gradient summed over 10^4 edges, differ by ~2e-5 between f32 and f64 PyTorch)")
    c.add_argument("--variants", default="concat,split",
                   help="edge-MLP first layer: concat (textbook) and/or split (the concat trick)")
    c.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="PyTorch's batching/aggregation (auto: as meshcast's model)")
    c.add_argument("--strict-step", action="store_true",
                   help="also fail when the step with PyTorch's own gradients differs beyond the tolerance")
    c.add_argument("--threads", type=int, default=0)
    b = sub.add_parser("bench", help="time PyTorch on benchmark-graph-format's cases")
    b.add_argument("--meshcast", default="target/release/meshcast")
    b.add_argument("--meshcast-report", help="an existing meshcast report (else run benchmark-graph-format)")
    b.add_argument("--out-dir", default="benchmarks")
    b.add_argument("--variant", default="concat", choices=("concat", "split"))
    b.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: the meshcast report's cpu_threads); CUDA cases use them "
                        "for host-side work only")
    b.add_argument("--atol-scale", type=float, default=ATOL_SCALE,
                   help="verification: atol = this x max|meshcast output| (with rtol 1e-5)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then benchmark-graph-format flags")
    k = sub.add_parser("bench-case", help=argparse.SUPPRESS)
    k.add_argument("--export", required=True)
    k.add_argument("--format", required=True, choices=FORMATS)
    k.add_argument("--variant", default="concat", choices=("concat", "split"))
    k.add_argument("--threads", type=int, required=True)
    k.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (meshcast's case device)")
    k.add_argument("--atol-scale", type=float, default=ATOL_SCALE)
    k.add_argument("--warmup", type=int, default=2)
    k.add_argument("--steps", type=int, default=10)
    k.add_argument("--forward-repeats", type=int, default=5)
    args = p.parse_args(argv)
    try:
        return {"check": run_check, "bench": run_bench, "bench-case": run_bench_case}[args.command](args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
