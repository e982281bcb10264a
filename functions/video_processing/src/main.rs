//! FunctionBench's `video_processing`: decodes the frames of a video, converts each to
//! grayscale and encodes the grayscale frames as a new video.
//!
//! The codec is H.264 through OpenH264 (the `openh264` crate, which compiles Cisco's C++
//! source into the binary; no system library is needed). During init the function
//! generates a deterministic 3-second, 320 × 240, 30 fps clip (a panning textured
//! background with moving shapes) and encodes it to an H.264 Annex B stream, the input
//! a real instance would have fetched. A request decodes the first `frames` frames
//! (default 30, at most 90), converts every decoded frame to RGB and then to gray with
//! the BT.601 weights (as `cvtColor(BGR2GRAY)` does), and re-encodes the gray frames
//! with a fresh single-threaded encoder at `bitrate_kbps` (default 500; its rate control
//! skips frames when the rate is too low for the content, about 100 kbps here).
//! Answer: `{"width", "height", "frames", "encoded_frames", "mean_gray", "input_bytes",
//! "output": {"bytes", "crc32"}}`.
//!
//! The codec runs with one thread (OpenH264's automatic mode would start a thread pool).
//! The color conversions used are scalar (the crate's SIMD YUV-to-RGB path picks AVX2 at
//! run time, so gray levels are computed here from the decoded planes), and OpenH264 is
//! compiled from C++ only unless `nasm` is installed on the build machine, so answers do
//! not depend on the CPU's SIMD features.

use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp, nal_units};
use reap_function::{Value, digest, json, serve, u64_field};

const WIDTH: usize = 320;
const HEIGHT: usize = 240;
const FPS: u32 = 30;
/// Length of the generated clip: 3 seconds.
const CLIP_FRAMES: usize = 90;
const INPUT_KBPS: u32 = 800;
const MIN_KBPS: u32 = 20;
const MAX_KBPS: u64 = 20_000;

/// An encoder for frames of the clip's size: one thread, bit-rate control (skipping
/// frames when the rate is too low), a key frame every second.
fn encoder(kbps: u32) -> Result<Encoder, String> {
    let config = EncoderConfig::new()
        .num_threads(1)
        .bitrate(BitRate::from_bps(kbps * 1000))
        .rate_control_mode(RateControlMode::Bitrate)
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(FPS));
    Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| format!("encoder: {e}"))
}

fn timestamp(frame: usize) -> Timestamp {
    Timestamp::from_millis(frame as u64 * 1000 / FPS as u64)
}

/// Encodes RGB frames of the clip's size into one H.264 Annex B stream. Returns the
/// stream and the number of frames encoded (the rate control skips frames when the bit
/// rate is too low for the content).
fn encode_rgb_frames<'a>(
    frames: impl Iterator<Item = &'a [u8]>,
    kbps: u32,
) -> Result<(Vec<u8>, usize), String> {
    let mut encoder = encoder(kbps)?;
    let mut stream = Vec::new();
    let mut encoded = 0;
    for (i, rgb) in frames.enumerate() {
        let yuv = YUVBuffer::from_rgb_source(RgbSliceU8::new(rgb, (WIDTH, HEIGHT)));
        let bitstream = encoder
            .encode_at(&yuv, timestamp(i))
            .map_err(|e| format!("encoding frame {i}: {e}"))?;
        if !matches!(bitstream.frame_type(), FrameType::Skip) {
            encoded += 1;
        }
        bitstream.write_vec(&mut stream);
    }
    Ok((stream, encoded))
}

/// Frame `t` of the generated clip, RGB: a textured background panning right, a ball
/// bouncing across it and a bar sweeping down.
fn clip_frame(t: usize, texture: &[u8]) -> Vec<u8> {
    let (tw, th) = (WIDTH * 2, HEIGHT);
    let ball = (
        (40 + 7 * t) % (2 * (WIDTH - 60)),
        60 + (t * 5) % (HEIGHT - 120),
    );
    let ball_x = if ball.0 > WIDTH - 60 {
        2 * (WIDTH - 60) - ball.0
    } else {
        ball.0
    } + 30;
    let bar_y = (t * 3) % HEIGHT;
    let mut rgb = Vec::with_capacity(WIDTH * HEIGHT * 3);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let tex = texture[y % th * tw + (x + 2 * t) % tw] as usize;
            let mut px = [
                ((x * 255 / WIDTH + tex) / 2) as u8,
                ((y * 255 / HEIGHT + tex) / 2) as u8,
                (tex / 2 + 64) as u8,
            ];
            let (dx, dy) = (x as isize - ball_x as isize, y as isize - ball.1 as isize);
            if dx * dx + dy * dy < 24 * 24 {
                px = [230, 40 + (t * 2 % 160) as u8, 40];
            }
            if y.abs_diff(bar_y) < 6 && x > WIDTH / 4 && x < WIDTH * 3 / 4 {
                px = [20, 20, 200];
            }
            rgb.extend_from_slice(&px);
        }
    }
    rgb
}

/// The generated clip's RGB frames.
fn clip_frames() -> Vec<Vec<u8>> {
    // A smooth random texture twice the frame's width, so that the background pans.
    let (tw, th) = (WIDTH * 2, HEIGHT);
    let mut rng = fastrand::Rng::with_seed(0x71de0);
    let coarse: Vec<u8> = (0..(tw / 8 + 1) * (th / 8 + 1))
        .map(|_| rng.u8(..))
        .collect();
    let texture: Vec<u8> = (0..th)
        .flat_map(|y| (0..tw).map(move |x| (y, x)))
        .map(|(y, x)| {
            let c = |cy: usize, cx: usize| coarse[cy * (tw / 8 + 1) + cx] as usize;
            let (cy, cx, fy, fx) = (y / 8, x / 8, y % 8, x % 8);
            let top = c(cy, cx) * (8 - fx) + c(cy, cx + 1) * fx;
            let bottom = c(cy + 1, cx) * (8 - fx) + c(cy + 1, cx + 1) * fx;
            ((top * (8 - fy) + bottom * fy) / 64) as u8
        })
        .collect();
    (0..CLIP_FRAMES).map(|t| clip_frame(t, &texture)).collect()
}

/// One pixel of a limited-range BT.601 YUV frame as RGB, in 16.16 fixed point.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (i32::from(y) - 16) * 76309;
    let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
    let clamp = |x: i32| ((x + 32768) >> 16).clamp(0, 255) as u8;
    [
        clamp(c + 104597 * e),
        clamp(c - 25675 * d - 53279 * e),
        clamp(c + 132201 * d),
    ]
}

/// Gray level of an RGB pixel with the BT.601 weights 0.299, 0.587 and 0.114 (in 14-bit
/// fixed point, as OpenCV's `cvtColor` computes it).
fn rgb_to_gray([r, g, b]: [u8; 3]) -> u8 {
    ((u32::from(r) * 4899 + u32::from(g) * 9617 + u32::from(b) * 1868 + 8192) >> 14) as u8
}

/// A decoded YUV 4:2:0 frame converted to RGB and then to gray, as an RGB frame with
/// equal channels (what a color video writer is given for a gray frame).
fn gray_frame(frame: &impl YUVSource) -> Vec<u8> {
    let (w, h) = frame.dimensions();
    let (ys, us, vs) = frame.strides();
    let (py, pu, pv) = (frame.y(), frame.u(), frame.v());
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let rgb = yuv_to_rgb(
                py[y * ys + x],
                pu[y / 2 * us + x / 2],
                pv[y / 2 * vs + x / 2],
            );
            let g = rgb_to_gray(rgb);
            out.extend_from_slice(&[g, g, g]);
        }
    }
    out
}

/// Decodes the first `frames` frames of an H.264 stream into gray RGB frames.
fn decode_gray(stream: &[u8], frames: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut decoder = Decoder::new().map_err(|e| format!("decoder: {e}"))?;
    let mut gray = Vec::with_capacity(frames);
    for nal in nal_units(stream) {
        if gray.len() == frames {
            break;
        }
        if let Some(frame) = decoder.decode(nal).map_err(|e| format!("decoding: {e}"))? {
            gray.push(gray_frame(&frame));
        }
    }
    if gray.len() < frames {
        for frame in decoder
            .flush_remaining()
            .map_err(|e| format!("decoding: {e}"))?
        {
            gray.push(gray_frame(&frame));
        }
    }
    gray.truncate(frames);
    Ok(gray)
}

/// The state a warm instance holds: the encoded input clip.
struct VideoProcessing {
    clip: Vec<u8>,
}

impl VideoProcessing {
    fn new() -> Self {
        let frames = clip_frames();
        let (clip, encoded) = encode_rgb_frames(frames.iter().map(Vec::as_slice), INPUT_KBPS)
            .expect("the generated clip encodes");
        assert_eq!(
            encoded, CLIP_FRAMES,
            "no frame of the input clip is skipped"
        );
        VideoProcessing { clip }
    }

    fn answer(&self, request: &Value) -> Result<Value, String> {
        let frames = u64_field(request, "frames", 30, CLIP_FRAMES as u64)? as usize;
        let kbps = u64_field(request, "bitrate_kbps", 500, MAX_KBPS)? as u32;
        if frames == 0 || kbps < MIN_KBPS {
            return Err(format!(
                "`frames` must be at least 1 and `bitrate_kbps` at least {MIN_KBPS}"
            ));
        }
        let gray = decode_gray(&self.clip, frames)?;
        if gray.len() != frames {
            return Err(format!(
                "the clip decoded to {} frames, {frames} wanted",
                gray.len()
            ));
        }
        let sum: u64 = gray
            .iter()
            .flat_map(|f| f.iter().step_by(3))
            .map(|&g| u64::from(g))
            .sum();
        let (output, encoded) = encode_rgb_frames(gray.iter().map(Vec::as_slice), kbps)?;
        Ok(json!({
            "width": WIDTH,
            "height": HEIGHT,
            "frames": frames,
            "encoded_frames": encoded,
            "mean_gray": sum / (frames * WIDTH * HEIGHT) as u64,
            "input_bytes": self.clip.len(),
            "output": digest(&output),
        }))
    }
}

fn main() {
    let video = VideoProcessing::new();
    serve(|request| video.answer(request));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_conversions() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(rgb_to_gray([255, 255, 255]), 255);
        assert_eq!(rgb_to_gray([0, 0, 0]), 0);
        assert_eq!(rgb_to_gray([255, 0, 0]), 76);
        assert_eq!(rgb_to_gray([0, 255, 0]), 150);
        assert_eq!(rgb_to_gray([0, 0, 255]), 29);
    }

    #[test]
    fn clip_round_trips_through_the_codec() {
        let frames: Vec<Vec<u8>> = clip_frames().into_iter().take(6).collect();
        let (stream, encoded) = encode_rgb_frames(frames.iter().map(Vec::as_slice), 2000).unwrap();
        assert_eq!(encoded, 6);
        let gray = decode_gray(&stream, 6).unwrap();
        assert_eq!(gray.len(), 6);
        for (original, decoded) in frames.iter().zip(&gray) {
            assert_eq!(decoded.len(), WIDTH * HEIGHT * 3);
            // The decoded frame is gray, and close to the original's gray levels.
            assert!(decoded.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
            let diff: u64 = original
                .chunks(3)
                .zip(decoded.chunks(3))
                .map(|(o, d)| u64::from(rgb_to_gray([o[0], o[1], o[2]]).abs_diff(d[0])))
                .sum();
            let mean_diff = diff as f64 / (WIDTH * HEIGHT) as f64;
            assert!(mean_diff < 8.0, "mean difference {mean_diff}");
        }
    }

    #[test]
    fn answers_are_deterministic_and_bad_requests_rejected() {
        let v = VideoProcessing::new();
        let a = v.answer(&json!({"frames": 3})).unwrap();
        assert_eq!(a["frames"], 3);
        assert_eq!(
            (a["width"].clone(), a["height"].clone()),
            (json!(WIDTH), json!(HEIGHT))
        );
        assert!(a["output"]["bytes"].as_u64().unwrap() > 100);
        assert_eq!(a, v.answer(&json!({"frames": 3})).unwrap());
        assert!(v.answer(&json!({"frames": 0})).is_err());
        assert!(v.answer(&json!({"frames": 1000})).is_err());
        assert!(v.answer(&json!({"bitrate_kbps": "fast"})).is_err());
    }
}
