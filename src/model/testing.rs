//! Test helpers: deterministic random tensors, tiny graphs and a finite-difference
//! gradient checker.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Grid;
use crate::graph::{self, GraphOptions, WeatherGraph};

/// Uniform in [-1, 1), reproducible from `seed`, on the CPU.
pub fn random_tensor(dims: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// A 30-degree global grid (72 nodes) with `valid` cells and a level-`mesh_level` mesh.
pub fn tiny_graph_masked(mesh_level: u32, valid: impl Fn(usize) -> bool) -> WeatherGraph {
    let grid = Grid::global_cell_centred(30.0);
    let valid: Vec<bool> = (0..grid.len()).map(valid).collect();
    let options = GraphOptions {
        mesh_level,
        ..GraphOptions::default()
    };
    graph::build(&grid, &valid, &options).expect("tiny graph")
}

/// [`tiny_graph_masked`] with every cell valid.
pub fn tiny_graph(mesh_level: u32) -> WeatherGraph {
    tiny_graph_masked(mesh_level, |_| true)
}

/// Central-difference step: large enough that rounding (~1e-16 |loss| / step)
/// stays far below the tolerance, small enough that truncation (~step^2) does too.
const STEP: f64 = 1e-5;
const REL_TOL: f64 = 1e-5;
const ABS_TOL: f64 = 1e-8;

/// Checks autograd against central differences of `loss = sum(f(input) * r)`
/// for a fixed random `r`, in F64: at a few entries of the input and of each
/// parameter named in `params` (VarMap keys). Also asserts that EVERY variable
/// of `varmap` and the input get a non-zero gradient, so a graph that silently
/// stops gradients anywhere fails.
pub fn check_gradients<F>(varmap: &VarMap, input: &Tensor, f: F, params: &[&str]) -> Result<()>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let input = Var::from_tensor(input)?;
    let out = f(input.as_tensor())?;
    let r = random_tensor(out.dims(), out.dtype(), 12345)?;
    let loss_of = |x: &Tensor| -> Result<f64> { (f(x)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let grads = (out * &r)?.sum_all()?.backward()?;

    let vars = varmap.data().lock().expect("varmap lock").clone();
    let mut all: Vec<(&str, &Var)> = vars.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.push(("<input>", &input));
    for (name, var) in &all {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = grad.sqr()?.sum_all()?.to_scalar::<f64>()?;
        assert!(norm > 0.0, "{name}: gradient is zero");
    }

    let mut checked: Vec<(&str, &Var)> = vec![("<input>", &input)];
    for &name in params {
        let var = vars
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        checked.push((name, var));
    }
    for (name, var) in checked {
        let analytic = grads
            .get(var.as_tensor())
            .expect("checked above")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let original = var.as_tensor().copy()?;
        let values = original.flatten_all()?.to_vec1::<f64>()?;
        let n = values.len();
        let mut entries = vec![0, n / 3, n / 2, n - 1];
        entries.dedup();
        for i in entries {
            let loss_at = |delta: f64| -> Result<f64> {
                let mut v = values.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, original.dims(), original.device())?)?;
                loss_of(input.as_tensor())
            };
            let numeric = (loss_at(STEP)? - loss_at(-STEP)?) / (2.0 * STEP);
            var.set(&original)?;
            let a = analytic[i];
            let err = (a - numeric).abs();
            assert!(
                err < ABS_TOL || err < REL_TOL * a.abs().max(numeric.abs()),
                "{name}[{i}]: autograd {a:e} vs finite difference {numeric:e}"
            );
        }
    }
    Ok(())
}

/// One test body per device, as candle's `test_device!`: `$cpu` runs it on the CPU;
/// in a `cuda` build `$cuda` runs the same body on GPU 0 (see [`test_gpu`]). The body
/// takes the device its op runs on and compares with references on the CPU.
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() -> candle_core::Result<()> {
            $body(&candle_core::Device::Cpu)
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() -> candle_core::Result<()> {
            match crate::model::testing::test_gpu()? {
                Some(device) => $body(&device),
                None => Ok(()),
            }
        }
    };
}
pub(crate) use test_device;

/// GPU 0 for the CUDA half of a [`test_device!`] test. Without a GPU the test passes
/// with a note, so a `cuda` build's tests run anywhere, unless `MESHCAST_REQUIRE_GPU`
/// is set (scripts/gpu-measure.sh sets it): then a missing GPU fails the test.
#[cfg(feature = "cuda")]
pub fn test_gpu() -> Result<Option<Device>> {
    match Device::new_cuda(0) {
        Ok(device) => Ok(Some(device)),
        Err(e) if std::env::var_os("MESHCAST_REQUIRE_GPU").is_some() => Err(e),
        Err(_) => {
            eprintln!("no GPU: the CUDA half of this test did not run");
            Ok(None)
        }
    }
}
