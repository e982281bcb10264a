//! `rnn_serving`: generates surnames with a character-level LSTM, after PyTorch's
//! "generating names with a character-level RNN" model that FunctionBench serves.
//!
//! At init, before the first request is read (so a snapshot holds the trained model),
//! the program trains a candle LSTM (one layer, 64 units) and a linear read-out on the
//! embedded surname lists of eight languages (`names`): the input of each step is the
//! language and the current letter (one-hot), the target is the next letter or the end
//! of the name. Weights start from a seeded RNG, so training, and every answer, is
//! deterministic.
//!
//! Request fields (all optional):
//! - `language` (default `"russian"`): one of the languages of `names`, any case;
//! - `start_letters` (default `"RUS"`): one name is generated per letter, at most 26;
//! - `max_length` (default 12, at most 20): longest name generated.
//!
//! Each name is generated greedily: the most probable next letter until the model ends
//! the name or it reaches `max_length`.

mod names;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::rnn::{LSTM, LSTMConfig, LSTMState, RNN};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reap_function::{Value, json, serve, str_field, u64_field};

/// Letters a-z.
const LETTERS: usize = 26;
/// Output classes: 0 ends the name, 1..=26 are a-z.
const CLASSES: usize = LETTERS + 1;
const HIDDEN: usize = 64;
const EPOCHS: usize = 40;
const LEARNING_RATE: f64 = 0.04;
const WEIGHT_SEED: u64 = 1984;
const MAX_LENGTH: u64 = 20;

struct CharRnn {
    lstm: LSTM,
    out: Linear,
    languages: Vec<&'static str>,
    /// Mean cross-entropy per letter before and after training.
    initial_loss: f32,
    loss: f32,
}

/// One training batch: every name of every language, padded to the longest.
struct Batch {
    /// `(names, steps, languages + 26)`: language and current letter, one-hot.
    inputs: Tensor,
    /// `(names × steps, 27)`: the next letter or the end, one-hot; zero rows for padding.
    targets: Tensor,
    /// Number of non-padding steps.
    steps: usize,
}

fn letter_index(b: u8) -> usize {
    usize::from(b - b'a')
}

impl Batch {
    fn new() -> candle_core::Result<Self> {
        let n_lang = names::NAMES.len();
        let in_dim = n_lang + LETTERS;
        let all: Vec<(usize, &[u8])> = names::NAMES
            .iter()
            .enumerate()
            .flat_map(|(l, (_, list))| list.split_whitespace().map(move |n| (l, n.as_bytes())))
            .collect();
        let t = all.iter().map(|(_, n)| n.len()).max().unwrap_or(1);
        let mut inputs = vec![0f32; all.len() * t * in_dim];
        let mut targets = vec![0f32; all.len() * t * CLASSES];
        let mut steps = 0;
        for (b, (lang, name)) in all.iter().enumerate() {
            for (s, &c) in name.iter().enumerate() {
                let row = (b * t + s) * in_dim;
                inputs[row + lang] = 1.0;
                inputs[row + n_lang + letter_index(c)] = 1.0;
                let next = name.get(s + 1).map_or(0, |&n| letter_index(n) + 1);
                targets[(b * t + s) * CLASSES + next] = 1.0;
                steps += 1;
            }
        }
        let dev = Device::Cpu;
        Ok(Self {
            inputs: Tensor::from_vec(inputs, (all.len(), t, in_dim), &dev)?,
            targets: Tensor::from_vec(targets, (all.len() * t, CLASSES), &dev)?,
            steps,
        })
    }
}

/// Adds a variable of `shape` to `vars`, uniform in `±bound` from `rng` (PyTorch's
/// default initialization of LSTM and linear layers), for the layer builders to find.
fn seeded_var(
    vars: &VarMap,
    name: &str,
    shape: &[usize],
    bound: f32,
    rng: &mut StdRng,
) -> candle_core::Result<()> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    let var = Var::from_vec(v, shape, &Device::Cpu)?;
    vars.data()
        .lock()
        .expect("the var map is not poisoned")
        .insert(name.to_string(), var);
    Ok(())
}

impl CharRnn {
    /// Builds the network from seeded weights and trains it on `names` for `epochs`
    /// full-batch steps.
    fn train(epochs: usize) -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let in_dim = names::NAMES.len() + LETTERS;
        let vars = VarMap::new();
        let mut rng = StdRng::seed_from_u64(WEIGHT_SEED);
        let bound = 1.0 / (HIDDEN as f32).sqrt();
        seeded_var(
            &vars,
            "lstm.weight_ih_l0",
            &[4 * HIDDEN, in_dim],
            bound,
            &mut rng,
        )?;
        seeded_var(
            &vars,
            "lstm.weight_hh_l0",
            &[4 * HIDDEN, HIDDEN],
            bound,
            &mut rng,
        )?;
        seeded_var(&vars, "lstm.bias_ih_l0", &[4 * HIDDEN], bound, &mut rng)?;
        seeded_var(&vars, "lstm.bias_hh_l0", &[4 * HIDDEN], bound, &mut rng)?;
        seeded_var(&vars, "out.weight", &[CLASSES, HIDDEN], bound, &mut rng)?;
        seeded_var(&vars, "out.bias", &[CLASSES], bound, &mut rng)?;
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let lstm = candle_nn::rnn::lstm(in_dim, HIDDEN, LSTMConfig::default(), vb.pp("lstm"))?;
        let out = candle_nn::linear(HIDDEN, CLASSES, vb.pp("out"))?;
        let mut net = Self {
            lstm,
            out,
            languages: names::NAMES.iter().map(|(l, _)| *l).collect(),
            initial_loss: 0.0,
            loss: 0.0,
        };

        let batch = Batch::new()?;
        let params = ParamsAdamW {
            lr: LEARNING_RATE,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.all_vars(), params)?;
        net.initial_loss = net.batch_loss(&batch)?.to_scalar()?;
        for _ in 0..epochs {
            let loss = net.batch_loss(&batch)?;
            opt.backward_step(&loss)?;
        }
        net.loss = net.batch_loss(&batch)?.to_scalar()?;
        Ok(net)
    }

    /// Mean cross-entropy of the next-letter predictions over the non-padding steps.
    fn batch_loss(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let states = self.lstm.seq(&batch.inputs)?;
        let h = self.lstm.states_to_tensor(&states)?; // (names, steps, hidden)
        let (b, t, _) = h.dims3()?;
        let logits = self.out.forward(&h.reshape((b * t, HIDDEN))?)?;
        let log_p = candle_nn::ops::log_softmax(&logits, 1)?;
        (log_p * &batch.targets)?
            .sum_all()?
            .affine(-1.0 / batch.steps as f64, 0.0)
    }

    /// One name per start letter (`a`-`z`), in `language`, greedily.
    fn generate(
        &self,
        language: usize,
        starts: &[u8],
        max_length: usize,
    ) -> candle_core::Result<Vec<String>> {
        let n_lang = self.languages.len();
        let in_dim = n_lang + LETTERS;
        let mut names: Vec<Vec<u8>> = starts.iter().map(|&c| vec![c]).collect();
        let mut done = vec![false; starts.len()];
        let mut state: LSTMState = self.lstm.zero_state(starts.len())?;
        while names
            .iter()
            .zip(&done)
            .any(|(n, &d)| !d && n.len() < max_length)
        {
            let mut x = vec![0f32; starts.len() * in_dim];
            for (b, name) in names.iter().enumerate() {
                let last = *name.last().unwrap_or(&b'a');
                x[b * in_dim + language] = 1.0;
                x[b * in_dim + n_lang + letter_index(last)] = 1.0;
            }
            let x = Tensor::from_vec(x, (starts.len(), in_dim), &Device::Cpu)?;
            state = self.lstm.step(&x, &state)?;
            let logits = self.out.forward(state.h())?.to_vec2::<f32>()?;
            for (b, row) in logits.iter().enumerate() {
                if done[b] || names[b].len() >= max_length {
                    continue;
                }
                let next = argmax(row);
                if next == 0 {
                    done[b] = true;
                } else {
                    names[b].push(b'a' + (next - 1) as u8);
                }
            }
        }
        Ok(names
            .into_iter()
            .map(|n| {
                let mut s = String::from_utf8(n).unwrap_or_default();
                s[..1].make_ascii_uppercase();
                s
            })
            .collect())
    }
}

/// Index of the largest value (ties: the lowest index).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn answer(net: &CharRnn, request: &Value) -> Result<Value, String> {
    let language = str_field(request, "language", "russian")?.to_ascii_lowercase();
    let Some(lang) = net.languages.iter().position(|l| *l == language) else {
        return Err(format!(
            "unknown `language` {language:?}, known: {}",
            net.languages.join(", ")
        ));
    };
    let letters = str_field(request, "start_letters", "RUS")?;
    if letters.is_empty()
        || letters.len() > LETTERS
        || !letters.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err(format!(
            "`start_letters` must be 1 to {LETTERS} letters a-z, got {letters:?}"
        ));
    }
    let max_length = u64_field(request, "max_length", 12, MAX_LENGTH)?;
    if max_length < 2 {
        return Err("`max_length` must be at least 2".into());
    }
    let starts: Vec<u8> = letters.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let names = net
        .generate(lang, &starts, max_length as usize)
        .map_err(|e| format!("generation failed: {e}"))?;
    Ok(json!({"language": language, "names": names}))
}

fn main() {
    reap_function::single_threaded_runtime();
    let net = CharRnn::train(EPOCHS).expect("training the name generator");
    eprintln!(
        "rnn_serving: cross-entropy per letter {:.3} -> {:.3}",
        net.initial_loss, net.loss
    );
    serve(|request| answer(&net, request));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    /// Unoptimized builds train for fewer epochs: candle's element-wise operations are
    /// slow there. Release builds (and CI) test the model that is served.
    const TEST_EPOCHS: usize = if cfg!(debug_assertions) { 10 } else { EPOCHS };

    static NET: LazyLock<CharRnn> = LazyLock::new(|| CharRnn::train(TEST_EPOCHS).unwrap());

    #[test]
    fn training_lowers_the_loss() {
        // An untrained model is near ln 27 = 3.3 nats per letter.
        assert!(NET.initial_loss > 3.0, "{}", NET.initial_loss);
        assert!(
            NET.loss < 0.75 * NET.initial_loss,
            "{} -> {}",
            NET.initial_loss,
            NET.loss
        );
    }

    #[test]
    fn names_start_with_the_given_letters() {
        let a = answer(
            &NET,
            &json!({"language": "German", "start_letters": "gEr", "max_length": 8}),
        )
        .unwrap();
        assert_eq!(a["language"], "german");
        let names = a["names"].as_array().unwrap();
        assert_eq!(names.len(), 3);
        for (name, first) in names.iter().zip(['G', 'E', 'R']) {
            let name = name.as_str().unwrap();
            assert!(name.starts_with(first), "{name}");
            assert!((1..=8).contains(&name.len()), "{name}");
            assert!(name[1..].bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        }
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let a = answer(&NET, &json!({})).unwrap();
        assert_eq!(a["language"], "russian");
        assert_eq!(a["names"].as_array().unwrap().len(), 3);
        assert!(
            answer(&NET, &json!({"language": "klingon"}))
                .unwrap_err()
                .contains("russian")
        );
        assert!(answer(&NET, &json!({"start_letters": ""})).is_err());
        assert!(answer(&NET, &json!({"start_letters": "a1"})).is_err());
        assert!(answer(&NET, &json!({"start_letters": "é"})).is_err());
        assert!(answer(&NET, &json!({"max_length": 1})).is_err());
        assert!(answer(&NET, &json!({"max_length": 21})).is_err());
    }

    #[test]
    fn argmax_prefers_the_first_of_equals() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[1.0]), 0);
    }
}
