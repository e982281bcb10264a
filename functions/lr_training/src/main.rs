//! `lr_training`: trains a logistic-regression classifier on a generated dataset.
//!
//! Request fields (all optional):
//! - `samples` (default 1000): rows of the dataset, 80% used for training, 20% held out;
//! - `features` (default 20): columns of the dataset;
//! - `epochs` (default 200): full-batch gradient-descent steps;
//! - `seed` (default 42): seed of the generated dataset;
//! - `learning_rate_milli` (default 500): the learning rate, in thousandths.
//!
//! A dataset holds at most 4M values, and a request may cost at most
//! `samples × (features + 15) × epochs` = 10⁹ (about 2 s); larger ones are refused.
//!
//! The dataset is drawn from a seeded RNG: a hidden weight vector and bias, features
//! from a standard normal distribution and labels drawn from the logistic model of the
//! hidden weights, so even the hidden model misclassifies some rows. The model is a
//! candle `Linear` layer trained with candle's autograd and its SGD optimizer on the
//! numerically stable binary cross-entropy. The answer holds the loss before and after
//! training, the accuracy on the training and the held-out rows, and the norm of the
//! learned weights, rounded to 5 significant digits.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, Optimizer, SGD, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use reap_function::{Value, json, round_sig, serve, u64_field};

const MAX_SAMPLES: u64 = 200_000;
const MAX_FEATURES: u64 = 1_000;
const MAX_EPOCHS: u64 = 10_000;
/// Largest dataset, in values (16 MB of `f32`).
const MAX_CELLS: u64 = 4_000_000;
/// Largest amount of work, `samples × (features + WORK_PER_SAMPLE) × epochs`: about 2 s.
const MAX_WORK: u64 = 1_000_000_000;
/// Cost of the per-sample element-wise steps of an epoch, in multiply-adds.
const WORK_PER_SAMPLE: u64 = 15;

/// A generated binary-classification dataset.
struct Dataset {
    /// `samples × features`, row-major.
    x: Vec<f32>,
    /// 0.0 or 1.0 per row.
    y: Vec<f32>,
    samples: usize,
    features: usize,
}

impl Dataset {
    fn generate(samples: usize, features: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Hidden weights scaled so that the logits have a standard deviation of about 3.
        let scale = 3.0 / (features as f64).sqrt();
        let hidden: Vec<f64> = (0..features)
            .map(|_| rng.sample::<f64, _>(StandardNormal) * scale)
            .collect();
        let bias: f64 = rng.random_range(-0.5..0.5);
        let mut x = Vec::with_capacity(samples * features);
        let mut y = Vec::with_capacity(samples);
        for _ in 0..samples {
            let mut logit = bias;
            for w in &hidden {
                let v: f64 = rng.sample(StandardNormal);
                logit += w * v;
                x.push(v as f32);
            }
            let p = 1.0 / (1.0 + (-logit).exp());
            y.push(if rng.random::<f64>() < p { 1.0 } else { 0.0 });
        }
        Self {
            x,
            y,
            samples,
            features,
        }
    }

    /// The rows `start..start + len` as tensors `(len, features)` and `(len, 1)`.
    fn rows(
        &self,
        start: usize,
        len: usize,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let f = self.features;
        let x = Tensor::from_slice(&self.x[start * f..(start + len) * f], (len, f), dev)?;
        let y = Tensor::from_slice(&self.y[start..start + len], (len, 1), dev)?;
        Ok((x, y))
    }
}

/// Mean binary cross-entropy of `logits` against 0/1 `targets`, in the stable form
/// `max(z, 0) - y z + ln(1 + e^-|z|)`.
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    (softplus - (targets * logits)?)?.mean_all()
}

/// Fraction of rows whose predicted class (logit > 0) equals the target.
fn accuracy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<f64> {
    let predicted = logits.gt(0.0)?.to_dtype(DType::F32)?;
    let correct = predicted.eq(targets)?.to_dtype(DType::F32)?;
    Ok(f64::from(correct.mean_all()?.to_scalar::<f32>()?))
}

#[derive(Debug)]
struct Outcome {
    initial_loss: f64,
    loss: f64,
    train_accuracy: f64,
    test_accuracy: f64,
    weight_norm: f64,
    bias: f64,
}

/// Trains on the first 80% of `data` for `epochs` steps and evaluates on the rest.
fn train(data: &Dataset, epochs: usize, learning_rate: f64) -> candle_core::Result<Outcome> {
    let dev = Device::Cpu;
    let n_train = (data.samples * 4 / 5).max(1);
    let n_test = data.samples - n_train;
    let (x, y) = data.rows(0, n_train, &dev)?;

    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let init = candle_nn::Init::Const(0.0);
    let weight = vb.get_with_hints((1, data.features), "weight", init)?;
    let bias = vb.get_with_hints(1, "bias", init)?;
    let model = Linear::new(weight, Some(bias));
    let mut sgd = SGD::new(vars.all_vars(), learning_rate)?;

    let initial_loss = bce_with_logits(&model.forward(&x)?, &y)?.to_scalar::<f32>()?;
    for _ in 0..epochs {
        let loss = bce_with_logits(&model.forward(&x)?, &y)?;
        sgd.backward_step(&loss)?;
    }
    let logits = model.forward(&x)?;
    let loss = bce_with_logits(&logits, &y)?.to_scalar::<f32>()?;
    let train_accuracy = accuracy(&logits, &y)?;
    let test_accuracy = if n_test == 0 {
        train_accuracy
    } else {
        let (xt, yt) = data.rows(n_train, n_test, &dev)?;
        accuracy(&model.forward(&xt)?, &yt)?
    };
    let w = model.weight();
    let weight_norm = w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let bias = model
        .bias()
        .map_or(Ok(0.0), |b| b.squeeze(D::Minus1)?.to_scalar::<f32>())?;
    Ok(Outcome {
        initial_loss: f64::from(initial_loss),
        loss: f64::from(loss),
        train_accuracy,
        test_accuracy,
        weight_norm: f64::from(weight_norm),
        bias: f64::from(bias),
    })
}

/// Numbers in answers keep 5 significant digits.
fn round5(x: f64) -> f64 {
    round_sig(x, 5)
}

fn answer(request: &Value) -> Result<Value, String> {
    let samples = u64_field(request, "samples", 1000, MAX_SAMPLES)?;
    let features = u64_field(request, "features", 20, MAX_FEATURES)?;
    let epochs = u64_field(request, "epochs", 200, MAX_EPOCHS)?;
    let seed = u64_field(request, "seed", 42, u64::MAX)?;
    let lr_milli = u64_field(request, "learning_rate_milli", 500, 100_000)?;
    if samples < 2 || features < 1 || lr_milli == 0 {
        return Err(
            "`samples` must be at least 2, `features` and `learning_rate_milli` at least 1".into(),
        );
    }
    if samples * features > MAX_CELLS {
        return Err(format!(
            "samples × features is {}, at most {MAX_CELLS} is allowed",
            samples * features
        ));
    }
    if samples * (features + WORK_PER_SAMPLE) * epochs > MAX_WORK {
        return Err(format!(
            "samples × (features + {WORK_PER_SAMPLE}) × epochs is at most {MAX_WORK}"
        ));
    }
    let data = Dataset::generate(samples as usize, features as usize, seed);
    let out = train(&data, epochs as usize, lr_milli as f64 / 1000.0)
        .map_err(|e| format!("training failed: {e}"))?;
    Ok(json!({
        "samples": samples,
        "features": features,
        "epochs": epochs,
        "initial_loss": round5(out.initial_loss),
        "loss": round5(out.loss),
        "train_accuracy": round5(out.train_accuracy),
        "test_accuracy": round5(out.test_accuracy),
        "weight_norm": round5(out.weight_norm),
        "bias": round5(out.bias),
    }))
}

fn main() {
    reap_function::single_threaded_runtime();
    // Warm up during init, so that the snapshot holds candle's code and lazily
    // initialized state (CPU feature detection, the optimizer's code paths).
    let warmup = Dataset::generate(64, 4, 0);
    train(&warmup, 5, 0.5).expect("warm-up training");
    serve(answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_decreases_and_accuracy_beats_chance() {
        let data = Dataset::generate(2000, 10, 7);
        let out = train(&data, 200, 0.5).unwrap();
        assert!(
            (out.initial_loss - std::f64::consts::LN_2).abs() < 1e-4,
            "{out:?}"
        );
        assert!(out.loss < 0.75 * out.initial_loss, "{out:?}");
        assert!(out.train_accuracy > 0.7, "{out:?}");
        assert!(out.test_accuracy > 0.7, "{out:?}");
        assert!(out.weight_norm > 1.0, "{out:?}");
    }

    #[test]
    fn more_epochs_never_hurt_the_training_loss() {
        let data = Dataset::generate(500, 5, 1);
        let short = train(&data, 10, 0.5).unwrap();
        let long = train(&data, 100, 0.5).unwrap();
        assert!(long.loss < short.loss, "{short:?} {long:?}");
    }

    #[test]
    fn generation_is_deterministic() {
        let a = Dataset::generate(50, 3, 9);
        let b = Dataset::generate(50, 3, 9);
        assert_eq!(a.x, b.x);
        assert_eq!(a.y, b.y);
        assert_ne!(a.x, Dataset::generate(50, 3, 10).x);
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let a = answer(&json!({})).unwrap();
        assert_eq!(a, answer(&json!({})).unwrap());
        assert_eq!(a["samples"], 1000);
        assert!(a["loss"].as_f64().unwrap() < a["initial_loss"].as_f64().unwrap());
        assert!(answer(&json!({"samples": "many"})).is_err());
        assert!(answer(&json!({"samples": 1})).is_err());
        assert!(answer(&json!({"samples": 200000, "features": 1000})).is_err());
        assert!(answer(&json!({"samples": 100000, "features": 40, "epochs": 10000})).is_err());
        let too_long = json!({"samples": 200000, "features": 20, "epochs": 500});
        assert!(answer(&too_long).unwrap_err().contains("at most"));
    }
}
