//! `lr_serving`: sentiment prediction of review texts with a logistic-regression model
//! over TF-IDF features.
//!
//! At init, before the first request is read (so a snapshot holds it all), the program
//! generates a corpus of 2,000 templated product reviews (`corpus`), learns a TF-IDF
//! vocabulary of unigrams and bigrams from it (`tfidf`), and trains a logistic regression
//! on those features with candle's autograd and AdamW optimizer.
//!
//! Request: `{"reviews": ["text", ...]}` (at most 64 texts of at most 10,000 bytes) or
//! `{"review": "text"}`; `{}` classifies a few built-in reviews. The answer lists for
//! each text its label (`positive` or `negative`) and the probability that it is
//! positive, rounded to 5 significant digits.

mod corpus;
mod tfidf;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use reap_function::{Value, json, round_sig, serve};
use tfidf::Vectorizer;

const CORPUS_SIZE: usize = 2000;
const CORPUS_SEED: u64 = 2021;
/// Fraction of corpus reviews with the wrong label.
const LABEL_NOISE: f64 = 0.03;
const MIN_DF: usize = 2;
const MAX_FEATURES: usize = 1000;
const EPOCHS: usize = 80;
const MAX_REVIEWS: usize = 64;
const MAX_REVIEW_BYTES: usize = 10_000;

/// Answered for `{}`.
const DEFAULT_REVIEWS: [&str; 4] = [
    "This movie was absolutely wonderful, the acting was superb and I would recommend it to everyone.",
    "Terrible phone. It broke after two days and customer service was rude and useless.",
    "The hotel room was clean and comfortable, and the staff were friendly and helpful.",
    "Waste of money: the blender is noisy and flimsy, and it stopped working within a week.",
];

struct SentimentModel {
    vectorizer: Vectorizer,
    linear: Linear,
    /// Accuracy on the training corpus.
    train_accuracy: f64,
}

/// Mean binary cross-entropy of `logits` against 0/1 `targets`, in the stable form
/// `max(z, 0) - y z + ln(1 + e^-|z|)`.
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    (softplus - (targets * logits)?)?.mean_all()
}

impl SentimentModel {
    /// Generates the corpus, fits the vectorizer and trains the classifier.
    fn train() -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let reviews = corpus::generate(CORPUS_SIZE, CORPUS_SEED, LABEL_NOISE);
        let vectorizer = Vectorizer::fit(
            reviews.iter().map(|r| r.text.as_str()),
            MIN_DF,
            MAX_FEATURES,
        );
        let mut x = Vec::with_capacity(reviews.len() * vectorizer.len());
        for r in &reviews {
            vectorizer.transform_into(&r.text, &mut x);
        }
        let x = Tensor::from_vec(x, (reviews.len(), vectorizer.len()), &dev)?;
        let y: Vec<f32> = reviews
            .iter()
            .map(|r| if r.positive { 1.0 } else { 0.0 })
            .collect();
        let y = Tensor::from_vec(y, (reviews.len(), 1), &dev)?;

        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let init = candle_nn::Init::Const(0.0);
        let weight = vb.get_with_hints((1, vectorizer.len()), "weight", init)?;
        let bias = vb.get_with_hints(1, "bias", init)?;
        let linear = Linear::new(weight, Some(bias));
        let params = ParamsAdamW {
            lr: 0.05,
            weight_decay: 1e-3,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.all_vars(), params)?;
        for _ in 0..EPOCHS {
            let loss = bce_with_logits(&linear.forward(&x)?, &y)?;
            opt.backward_step(&loss)?;
        }
        let predicted = linear.forward(&x)?.gt(0.0)?.to_dtype(DType::F32)?;
        let correct = predicted.eq(&y)?.to_dtype(DType::F32)?.mean_all()?;
        let train_accuracy = f64::from(correct.to_scalar::<f32>()?);
        Ok(Self {
            vectorizer,
            linear,
            train_accuracy,
        })
    }

    /// Probability that each text is positive.
    fn predict(&self, texts: &[&str]) -> candle_core::Result<Vec<f32>> {
        let mut x = Vec::with_capacity(texts.len() * self.vectorizer.len());
        for t in texts {
            self.vectorizer.transform_into(t, &mut x);
        }
        let x = Tensor::from_vec(x, (texts.len(), self.vectorizer.len()), &Device::Cpu)?;
        let p = candle_nn::ops::sigmoid(&self.linear.forward(&x)?)?;
        p.squeeze(1)?.to_vec1::<f32>()
    }
}

/// The texts of a request: `reviews`, `review`, or the built-in ones.
fn texts(request: &Value) -> Result<Vec<&str>, String> {
    let texts: Vec<&str> = match (request.get("reviews"), request.get("review")) {
        (Some(_), Some(_)) => return Err("give `reviews` or `review`, not both".into()),
        (Some(Value::Array(items)), None) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("`reviews` must hold strings, got {v}"))
            })
            .collect::<Result<_, _>>()?,
        (Some(v), None) => return Err(format!("`reviews` must be an array of strings, got {v}")),
        (None, Some(Value::String(s))) => vec![s.as_str()],
        (None, Some(v)) => return Err(format!("`review` must be a string, got {v}")),
        (None, None) => DEFAULT_REVIEWS.to_vec(),
    };
    if texts.is_empty() || texts.len() > MAX_REVIEWS {
        return Err(format!(
            "between 1 and {MAX_REVIEWS} reviews are allowed, got {}",
            texts.len()
        ));
    }
    if let Some(long) = texts.iter().position(|t| t.len() > MAX_REVIEW_BYTES) {
        return Err(format!(
            "review {long} is longer than {MAX_REVIEW_BYTES} bytes"
        ));
    }
    Ok(texts)
}

fn answer(model: &SentimentModel, request: &Value) -> Result<Value, String> {
    let texts = texts(request)?;
    let probs = model
        .predict(&texts)
        .map_err(|e| format!("prediction failed: {e}"))?;
    let predictions: Vec<Value> = probs
        .iter()
        .map(|&p| {
            let label = if p >= 0.5 { "positive" } else { "negative" };
            json!({"label": label, "p_positive": round_sig(f64::from(p), 5)})
        })
        .collect();
    Ok(json!({
        "predictions": predictions,
        "features": model.vectorizer.len(),
        "train_accuracy": round_sig(model.train_accuracy, 5),
    }))
}

fn main() {
    reap_function::single_threaded_runtime();
    let model = SentimentModel::train().expect("training the sentiment model");
    serve(|request| answer(&model, request));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static MODEL: LazyLock<SentimentModel> = LazyLock::new(|| SentimentModel::train().unwrap());

    #[test]
    fn learns_the_corpus() {
        // 3% of the labels are wrong: the model cannot (and should not) fit those.
        assert!(MODEL.train_accuracy > 0.9, "{}", MODEL.train_accuracy);
        assert!(MODEL.vectorizer.len() > 300, "{}", MODEL.vectorizer.len());
    }

    #[test]
    fn classifies_clear_reviews() {
        let p = MODEL.predict(&DEFAULT_REVIEWS).unwrap();
        assert!(p[0] > 0.8 && p[2] > 0.8, "{p:?}");
        assert!(p[1] < 0.2 && p[3] < 0.2, "{p:?}");
        let p = MODEL
            .predict(&[
                "Awesome, delicious pizza and lovely staff.",
                "Boring, bland and overpriced. Avoid it.",
            ])
            .unwrap();
        assert!(p[0] > 0.8 && p[1] < 0.2, "{p:?}");
        let unknown = MODEL.predict(&["zzz qqq"]).unwrap()[0];
        assert!(
            (0.2..0.8).contains(&unknown),
            "no known term: near the prior, {unknown}"
        );
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let a = answer(&MODEL, &json!({})).unwrap();
        let labels: Vec<&str> = a["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["positive", "negative", "positive", "negative"]);
        let one = answer(&MODEL, &json!({"review": DEFAULT_REVIEWS[1]})).unwrap();
        assert_eq!(one["predictions"][0], a["predictions"][1]);
        assert!(answer(&MODEL, &json!({"reviews": []})).is_err());
        assert!(answer(&MODEL, &json!({"reviews": [1]})).is_err());
        assert!(answer(&MODEL, &json!({"reviews": "text"})).is_err());
        assert!(answer(&MODEL, &json!({"review": 3})).is_err());
        assert!(answer(&MODEL, &json!({"review": "a", "reviews": ["b"]})).is_err());
        assert!(answer(&MODEL, &json!({"review": "x".repeat(MAX_REVIEW_BYTES + 1)})).is_err());
        let many: Vec<&str> = vec!["good"; MAX_REVIEWS + 1];
        assert!(answer(&MODEL, &json!({"reviews": many})).is_err());
    }
}
