//! FunctionBench's `image_rotate`: decodes a JPEG photo, rotates it and encodes the
//! result as a JPEG again, with the `image` crate (JPEG support only).
//!
//! During init the function generates a deterministic 1024 × 768 picture (sky and ground
//! gradients, a sun, hills, and a fine noise texture, so that it compresses like a
//! photo) and encodes it to a JPEG held in memory, the input a real instance would have
//! fetched. A request decodes that JPEG, rotates it by `degrees` (90, 180 or 270,
//! default 90) and encodes it with `quality` (1 to 100, default 75 as Pillow's); with
//! `rounds` > 1 (at most 16) the output is decoded, rotated and encoded again that many
//! times. Answer: `{"degrees", "quality", "rounds", "width", "height",
//! "input_bytes", "jpeg": {"bytes", "crc32"}}`.

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, RgbImage};
use reap_function::{Value, digest, json, serve, u64_field};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
const INPUT_QUALITY: u8 = 90;
const MAX_ROUNDS: u64 = 16;

/// A smooth periodic wave of period 1 between -1 and 1, from arithmetic only (the
/// libm `sin` may round differently on CPUs with and without FMA).
fn wave(t: f32) -> f32 {
    let q = 2.0 * t.rem_euclid(1.0) - 1.0;
    2.0 * q * q * (3.0 - 2.0 * q.abs()) - 1.0
}

/// The generated picture: a landscape with a noise texture.
fn picture() -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(0x1ea9e);
    let (w, h) = (WIDTH as f32, HEIGHT as f32);
    RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let (fx, fy) = (x as f32 / w, y as f32 / h);
        let horizon = 0.6 + 0.08 * wave(fx * 1.4) + 0.03 * wave(fx * 3.7 + 0.25);
        let (sx, sy) = (fx - 0.75, (fy - 0.22) * h / w);
        let mut px = if sx * sx + sy * sy < 0.004 {
            [255.0, 236.0, 170.0]
        } else if fy < horizon {
            [90.0 + 100.0 * fy, 140.0 + 90.0 * fy, 235.0 - 30.0 * fy]
        } else {
            let stripes = (wave(fx * 6.4 + fy * 2.4) * 0.5 + 0.5) * 40.0;
            [60.0 + stripes, 120.0 + 60.0 * (1.0 - fy) + stripes, 40.0]
        };
        let noise = f32::from(rng.u8(..)) / 255.0 * 24.0 - 12.0;
        for c in &mut px {
            *c = (*c + noise).clamp(0.0, 255.0);
        }
        image::Rgb(px.map(|c| c as u8))
    })
}

fn encode_jpeg(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(image)
        .map_err(|e| format!("encoding: {e}"))?;
    Ok(jpeg)
}

/// Decodes `jpeg`, rotates it by `degrees` clockwise and encodes it with `quality`.
fn rotate_jpeg(jpeg: &[u8], degrees: u64, quality: u8) -> Result<(Vec<u8>, u32, u32), String> {
    let image = image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg)
        .map_err(|e| format!("decoding: {e}"))?;
    let rotated = match degrees {
        90 => image.rotate90(),
        180 => image.rotate180(),
        270 => image.rotate270(),
        _ => return Err(format!("`degrees` must be 90, 180 or 270, got {degrees}")),
    };
    Ok((
        encode_jpeg(&rotated, quality)?,
        rotated.width(),
        rotated.height(),
    ))
}

/// The state a warm instance holds: the input photo, as a JPEG.
struct ImageRotate {
    jpeg: Vec<u8>,
}

impl ImageRotate {
    fn new() -> Self {
        let jpeg = encode_jpeg(&DynamicImage::ImageRgb8(picture()), INPUT_QUALITY)
            .expect("the generated picture encodes");
        ImageRotate { jpeg }
    }

    fn answer(&self, request: &Value) -> Result<Value, String> {
        let degrees = u64_field(request, "degrees", 90, 270)?;
        if !matches!(degrees, 90 | 180 | 270) {
            return Err(format!("`degrees` must be 90, 180 or 270, got {degrees}"));
        }
        let quality = u64_field(request, "quality", 75, 100)?;
        let rounds = u64_field(request, "rounds", 1, MAX_ROUNDS)?;
        if quality == 0 || rounds == 0 {
            return Err("`quality` and `rounds` must be at least 1".into());
        }
        let (mut jpeg, mut width, mut height) = rotate_jpeg(&self.jpeg, degrees, quality as u8)?;
        for _ in 1..rounds {
            (jpeg, width, height) = rotate_jpeg(&jpeg, degrees, quality as u8)?;
        }
        Ok(json!({
            "degrees": degrees,
            "quality": quality,
            "rounds": rounds,
            "width": width,
            "height": height,
            "input_bytes": self.jpeg.len(),
            "jpeg": digest(&jpeg),
        }))
    }
}

fn main() {
    let function = ImageRotate::new();
    serve(|request| function.answer(request));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jpeg: &[u8]) -> DynamicImage {
        image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg).unwrap()
    }

    #[test]
    fn rotations_swap_dimensions_and_four_are_identity() {
        let f = ImageRotate::new();
        let (j90, w, h) = rotate_jpeg(&f.jpeg, 90, 90).unwrap();
        assert_eq!((w, h), (HEIGHT, WIDTH));
        assert_eq!(decode(&j90).width(), HEIGHT);
        let (_, w, h) = rotate_jpeg(&f.jpeg, 180, 90).unwrap();
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let a = f
            .answer(&json!({"degrees": 90, "rounds": 4, "quality": 95}))
            .unwrap();
        assert_eq!(
            (a["width"].clone(), a["height"].clone()),
            (json!(WIDTH), json!(HEIGHT))
        );
    }

    #[test]
    fn rotation_moves_pixels() {
        // A picture whose top-left quarter is white: after 90° clockwise it is top-right.
        let img = RgbImage::from_fn(64, 32, |x, y| {
            image::Rgb(if x < 32 && y < 16 { [255; 3] } else { [0; 3] })
        });
        let jpeg = encode_jpeg(&DynamicImage::ImageRgb8(img), 100).unwrap();
        let (out, w, h) = rotate_jpeg(&jpeg, 90, 100).unwrap();
        assert_eq!((w, h), (32, 64));
        let out = decode(&out).to_rgb8();
        assert!(out.get_pixel(24, 8)[0] > 200, "top right is white");
        assert!(out.get_pixel(8, 8)[0] < 50, "top left is black");
        assert!(out.get_pixel(24, 56)[0] < 50, "bottom right is black");
    }

    #[test]
    fn input_is_a_photo_sized_jpeg() {
        let f = ImageRotate::new();
        assert!(f.jpeg.starts_with(&[0xff, 0xd8]));
        assert!(f.jpeg.len() > 50_000, "{} bytes", f.jpeg.len());
        assert_eq!(decode(&f.jpeg).width(), WIDTH);
        assert_eq!(f.jpeg, ImageRotate::new().jpeg);
    }

    #[test]
    fn answers_are_deterministic_and_bad_requests_rejected() {
        let f = ImageRotate::new();
        assert_eq!(f.answer(&json!({})).unwrap(), f.answer(&json!({})).unwrap());
        assert!(f.answer(&json!({"degrees": 45})).is_err());
        assert!(f.answer(&json!({"quality": 0})).is_err());
        assert!(f.answer(&json!({"quality": 101})).is_err());
        assert!(f.answer(&json!({"rounds": 17})).is_err());
    }
}
