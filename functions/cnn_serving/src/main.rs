//! `cnn_serving`: classifies 224×224 RGB images with a convolutional network shaped
//! exactly like SqueezeNet 1.1 (torchvision's `squeezenet1_1`: a stride-2 3×3 stem, eight
//! fire modules, three 3×3/2 max-pools, a 1×1 classifier convolution to 1000 classes and
//! global average pooling; 1,235,496 parameters), run with candle.
//!
//! No trained weights can be shipped or downloaded, so the weights are drawn at init
//! from a seeded RNG with the Kaiming-uniform scheme (biases zero): the network does all
//! the work of the real model, but its class indices carry no meaning. The model is
//! built, and run once, before the first request is read, so a snapshot holds it.
//!
//! Request fields (all optional):
//! - `seed` (default 1): seed of the first generated image;
//! - `images` (default 1, at most 8): images classified in one batch, with seeds
//!   `seed`, `seed + 1`, ...;
//! - `top_k` (default 5, at most 20): classes answered per image.
//!
//! Each image is a generated scene (a two-colour gradient, a dozen random discs and
//! rectangles, pixel noise), normalized with the ImageNet mean and deviation. The answer
//! lists per image the digest of its RGB pixels and the `top_k` classes with their
//! softmax probabilities, rounded to 5 significant digits.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reap_function::{Value, digest, json, round_sig, serve, u64_field};

const SIDE: usize = 224;
const CLASSES: usize = 1000;
const MAX_IMAGES: u64 = 8;
const MAX_TOP_K: u64 = 20;
/// Seed of the network's weights.
const WEIGHT_SEED: u64 = 0x5eed_1e55;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Draws convolution weights from one seeded RNG.
struct Weights {
    rng: StdRng,
    params: usize,
}

impl Weights {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            params: 0,
        }
    }

    /// A `k×k` convolution with Kaiming-uniform weights (ReLU gain) and zero biases.
    fn conv(
        &mut self,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> candle_core::Result<Conv2d> {
        let fan_in = c_in * k * k;
        let bound = (6.0 / fan_in as f32).sqrt();
        let n = c_out * fan_in;
        let w: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        self.params += n + c_out;
        let weight = Tensor::from_vec(w, (c_out, c_in, k, k), &Device::Cpu)?;
        let bias = Tensor::zeros(c_out, DType::F32, &Device::Cpu)?;
        let config = Conv2dConfig {
            stride,
            padding,
            ..Default::default()
        };
        Ok(Conv2d::new(weight, Some(bias), config))
    }
}

/// SqueezeNet's fire module: a 1×1 squeeze convolution feeding 1×1 and 3×3 expand
/// convolutions whose outputs are concatenated along the channels.
struct Fire {
    squeeze: Conv2d,
    expand1: Conv2d,
    expand3: Conv2d,
}

impl Fire {
    fn new(
        w: &mut Weights,
        c_in: usize,
        squeeze: usize,
        expand: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            squeeze: w.conv(c_in, squeeze, 1, 1, 0)?,
            expand1: w.conv(squeeze, expand, 1, 1, 0)?,
            expand3: w.conv(squeeze, expand, 3, 1, 1)?,
        })
    }
}

impl Module for Fire {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.squeeze.forward(x)?.relu()?;
        let e1 = self.expand1.forward(&s)?.relu()?;
        let e3 = self.expand3.forward(&s)?.relu()?;
        Tensor::cat(&[e1, e3], 1)
    }
}

struct SqueezeNet {
    stem: Conv2d,
    /// fire2 ... fire9.
    fires: Vec<Fire>,
    classifier: Conv2d,
    params: usize,
}

impl SqueezeNet {
    /// SqueezeNet 1.1 with weights drawn from `seed`.
    fn new(seed: u64) -> candle_core::Result<Self> {
        let mut w = Weights::new(seed);
        let stem = w.conv(3, 64, 3, 2, 0)?;
        // (input channels, squeeze, expand) of fire2 ... fire9.
        let shape = [
            (64, 16, 64),
            (128, 16, 64),
            (128, 32, 128),
            (256, 32, 128),
            (256, 48, 192),
            (384, 48, 192),
            (384, 64, 256),
            (512, 64, 256),
        ];
        let fires = shape
            .iter()
            .map(|&(c, s, e)| Fire::new(&mut w, c, s, e))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let classifier = w.conv(512, CLASSES, 1, 1, 0)?;
        Ok(Self {
            stem,
            fires,
            classifier,
            params: w.params,
        })
    }
}

impl Module for SqueezeNet {
    /// `(batch, 3, 224, 224)` normalized images to `(batch, 1000)` class probabilities.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pool = |x: Tensor| x.max_pool2d_with_stride(3, 2);
        let mut x = pool(self.stem.forward(x)?.relu()?)?;
        for (i, fire) in self.fires.iter().enumerate() {
            x = fire.forward(&x)?;
            // Max-pools follow fire3 and fire5.
            if i == 1 || i == 3 {
                x = pool(x)?;
            }
        }
        let logits = self.classifier.forward(&x)?.relu()?.mean((2, 3))?;
        candle_nn::ops::softmax_last_dim(&logits)
    }
}

/// A generated 224×224 RGB scene, row-major, 3 bytes per pixel.
fn generate_image(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let color = |rng: &mut StdRng| [0; 3].map(|_: u8| rng.random_range(0.0f32..255.0));
    let (from, to) = (color(&mut rng), color(&mut rng));
    let mut img = vec![0f32; SIDE * SIDE * 3];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let t = (x + y) as f32 / (2 * (SIDE - 1)) as f32;
            for c in 0..3 {
                img[(y * SIDE + x) * 3 + c] = from[c] + (to[c] - from[c]) * t;
            }
        }
    }
    let shapes = rng.random_range(8..16);
    for _ in 0..shapes {
        let disc = rng.random_bool(0.5);
        let (cx, cy) = (
            rng.random_range(0..SIDE) as i64,
            rng.random_range(0..SIDE) as i64,
        );
        let r = rng.random_range(8..60) as i64;
        let fill = color(&mut rng);
        let (y0, y1) = ((cy - r).max(0), (cy + r).min(SIDE as i64 - 1));
        let (x0, x1) = ((cx - r).max(0), (cx + r).min(SIDE as i64 - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                if disc && (x - cx).pow(2) + (y - cy).pow(2) > r * r {
                    continue;
                }
                let p = (y as usize * SIDE + x as usize) * 3;
                img[p..p + 3].copy_from_slice(&fill);
            }
        }
    }
    img.iter()
        .map(|&v| (v + rng.random_range(-8.0..8.0)).clamp(0.0, 255.0) as u8)
        .collect()
}

/// RGB bytes to a `(3, 224, 224)` tensor normalized with the ImageNet statistics.
fn to_input(rgb: &[u8]) -> candle_core::Result<Tensor> {
    let dev = Device::Cpu;
    let x = Tensor::from_slice(rgb, (SIDE, SIDE, 3), &dev)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?
        .affine(1.0 / 255.0, 0.0)?;
    let mean = Tensor::from_slice(&MEAN, (3, 1, 1), &dev)?;
    let std = Tensor::from_slice(&STD, (3, 1, 1), &dev)?;
    x.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// The `k` most probable classes, most probable first (ties: lower class first).
fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

/// Class probabilities of the images generated from `seeds`.
fn classify(net: &SqueezeNet, images: &[Vec<u8>]) -> candle_core::Result<Vec<Vec<f32>>> {
    let inputs = images
        .iter()
        .map(|rgb| to_input(rgb))
        .collect::<candle_core::Result<Vec<_>>>()?;
    net.forward(&Tensor::stack(&inputs, 0)?)?.to_vec2::<f32>()
}

fn answer(net: &SqueezeNet, request: &Value) -> Result<Value, String> {
    let seed = u64_field(request, "seed", 1, u64::MAX - MAX_IMAGES)?;
    let n = u64_field(request, "images", 1, MAX_IMAGES)?;
    let k = u64_field(request, "top_k", 5, MAX_TOP_K)?;
    if n == 0 || k == 0 {
        return Err("`images` and `top_k` must be at least 1".into());
    }
    let seeds: Vec<u64> = (seed..seed + n).collect();
    let images: Vec<Vec<u8>> = seeds.iter().map(|&s| generate_image(s)).collect();
    let probs = classify(net, &images).map_err(|e| format!("inference failed: {e}"))?;
    let results: Vec<Value> = seeds
        .iter()
        .zip(&images)
        .zip(&probs)
        .map(|((seed, rgb), p)| {
            let top: Vec<Value> = top_k(p, k as usize)
                .into_iter()
                .map(|(class, score)| json!({"class": class, "score": round_sig(f64::from(score), 5)}))
                .collect();
            json!({"seed": seed, "image": digest(rgb), "top": top})
        })
        .collect();
    Ok(json!({
        "model": "squeezenet1_1",
        "parameters": net.params,
        "classes": CLASSES,
        "results": results,
    }))
}

fn main() {
    reap_function::single_threaded_runtime();
    let net = SqueezeNet::new(WEIGHT_SEED).expect("building SqueezeNet");
    // One inference during init, so that the snapshot holds the code and heap it uses.
    classify(&net, &[generate_image(0)]).expect("warm-up inference");
    serve(|request| answer(&net, request));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    /// One network for all tests: unoptimized builds run it slowly.
    static NET: LazyLock<SqueezeNet> = LazyLock::new(|| SqueezeNet::new(WEIGHT_SEED).unwrap());

    #[test]
    fn has_squeezenet_1_1_parameter_count() {
        assert_eq!(NET.params, 1_235_496);
    }

    /// Images of `side × side` from a seeded RNG: the network takes any size, and small
    /// ones keep these tests fast in unoptimized builds.
    fn random_input(batch: usize, side: usize, seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = batch * 3 * side * side;
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, (batch, 3, side, side), &Device::Cpu).unwrap()
    }

    #[test]
    fn outputs_a_distribution_over_1000_classes() {
        let x = random_input(2, 64, 1);
        let probs = NET.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(probs.len(), 2);
        for p in &probs {
            assert_eq!(p.len(), CLASSES);
            assert!(p.iter().all(|&v| v >= 0.0));
            let sum: f32 = p.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        }
        assert_ne!(probs[0], probs[1], "different images, different outputs");
        // An image gets the same probabilities alone as in a batch.
        let alone = NET.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
        let alone = alone.to_vec2::<f32>().unwrap();
        let worst = alone[0]
            .iter()
            .zip(&probs[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn feature_map_sizes_follow_squeezenet() {
        let x = to_input(&generate_image(3)).unwrap().unsqueeze(0).unwrap();
        let stem = NET.stem.forward(&x).unwrap();
        assert_eq!(stem.dims(), &[1, 64, 111, 111]);
        let pooled = stem.max_pool2d_with_stride(3, 2).unwrap();
        assert_eq!(pooled.dims(), &[1, 64, 55, 55]);
        assert_eq!(
            NET.fires[0].forward(&pooled).unwrap().dims(),
            &[1, 128, 55, 55]
        );
    }

    #[test]
    fn images_are_deterministic_and_differ_by_seed() {
        let a = generate_image(5);
        assert_eq!(a.len(), SIDE * SIDE * 3);
        assert_eq!(a, generate_image(5));
        assert_ne!(a, generate_image(6));
    }

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_class() {
        let top = top_k(&[0.1, 0.3, 0.3, 0.05, 0.25], 3);
        assert_eq!(top, vec![(1, 0.3), (2, 0.3), (4, 0.25)]);
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let a = answer(&NET, &json!({})).unwrap();
        assert_eq!(a["parameters"], 1_235_496);
        assert_eq!(a["classes"], 1000);
        let results = a["results"].as_array().unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0]["seed"], 1);
        assert_eq!(results[0]["image"], digest(&generate_image(1)));
        let top = results[0]["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let scores: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(scores[0] > 1.0 / CLASSES as f64 && scores.iter().sum::<f64>() <= 1.0);
        assert!(answer(&NET, &json!({"images": 9})).is_err());
        assert!(answer(&NET, &json!({"images": 0})).is_err());
        assert!(answer(&NET, &json!({"top_k": 0})).is_err());
        assert!(answer(&NET, &json!({"seed": "x"})).is_err());
    }
}
