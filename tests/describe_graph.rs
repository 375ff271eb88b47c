//! `meshcast describe-graph`: counts on a global grid, the real storm1996 grid with its
//! masked corners, the on-disk cache, patches, and refused options.

mod common;

use common::*;

fn describe(args: &[&str]) -> serde_json::Value {
    let out = meshcast()
        .arg("-q")
        .arg("describe-graph")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn edge_set<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["edge_sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap()
}

#[test]
fn global_5_degree_grid_at_level_4() {
    let s = describe(&[
        "--global-grid",
        "5",
        "--mesh-level",
        "4",
        "--no-graph-cache",
    ]);
    assert_eq!(s["grid_nodes"], 36 * 72);
    assert_eq!(s["mesh_nodes"], 10 * 256 + 2);
    // Multi-mesh: both directions of the unique edges of levels 0..4 (30 * 4^r each).
    let unique: u64 = (0..=4).map(|r| 30 * 4u64.pow(r)).sum();
    assert_eq!(edge_set(&s, "mesh")["edges"], 2 * unique);
    // Every grid node decodes from exactly 3 mesh nodes; every mesh node hears the grid.
    assert_eq!(edge_set(&s, "mesh2grid")["edges"], 3 * 36 * 72);
    assert_eq!(edge_set(&s, "mesh2grid")["in_degree"]["min"], 3);
    assert!(
        edge_set(&s, "grid2mesh")["in_degree"]["min"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(s["cache"]["outcome"], "disabled");
}

#[test]
fn storm1996_grid_leaves_out_the_masked_corners_and_uses_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();
    let mut args: Vec<String> = storm_args();
    args.extend(["--graph-cache".into(), cache_arg.into()]);
    let run = |args: &[String]| {
        let out = meshcast()
            .arg("describe-graph")
            .args(args)
            .output()
            .unwrap();
        succeeded(&out);
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (_, log1) = run(&args);
    let (_, log2) = run(&args);
    assert!(log1.contains("cached") || log1.contains("built"), "{log1}");
    assert!(log2.contains("loaded graph from cache"), "{log2}");

    let s = describe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(s["grid_cells"], 33 * 36);
    // Cells masked in every step and variable are not graph nodes.
    let nodes = s["grid_nodes"].as_u64().unwrap();
    assert!(nodes < 33 * 36 && nodes > 33 * 36 * 3 / 4, "{nodes}");
    assert_eq!(s["mesh_level"], 5);
    assert_eq!(
        edge_set(&s, "mesh2grid")["edges"].as_u64().unwrap(),
        3 * nodes
    );
    // A regional mesh keeps only nodes near the region.
    assert!(s["mesh_nodes"].as_u64().unwrap() < 10242 / 5);
}

#[test]
fn patches_are_described() {
    let s = describe(&[
        "--global-grid",
        "5",
        "--mesh-level",
        "3",
        "--no-graph-cache",
        "--patches",
        "4",
    ]);
    assert_eq!(s["patches"]["count"], 4);
    assert_eq!(
        s["patches"]["owned_grid_nodes"]["min"].as_u64().unwrap() * 4,
        36 * 72
    );
}

#[test]
fn nonsense_options_are_refused() {
    let out = meshcast()
        .args([
            "-q",
            "describe-graph",
            "--global-grid",
            "5",
            "--mesh-level",
            "9",
            "--no-graph-cache",
        ])
        .output()
        .unwrap();
    assert_bad_input(&out, &["level"]);
    let out = meshcast()
        .args([
            "-q",
            "describe-graph",
            "--global-grid",
            "5",
            "--mesh-level",
            "2",
            "--no-graph-cache",
            "--patches",
            "100",
        ])
        .output()
        .unwrap();
    assert_bad_input(&out, &["patches"]);
}

#[test]
fn clear_graph_cache_removes_what_describe_graph_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let o = meshcast()
        .args([
            "-q",
            "describe-graph",
            "--global-grid",
            "10",
            "--graph-cache",
            cache,
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = meshcast()
        .args(["clear-graph-cache", "--graph-cache", cache])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("removed 1 cached graph file"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
