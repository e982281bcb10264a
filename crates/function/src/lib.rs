//! The function side of reap's contract (see `docs/guest-abi.md`).
//!
//! A function initializes (loads its model, templates, tables) and then calls [`serve`],
//! which reads one JSON request per line on stdin and writes exactly one JSON response
//! line on stdout for each. The same binary runs natively (`echo '{}' | ./fn`) and in a
//! reap microVM, where the first blocking read of stdin is the snapshot's ready point.

use std::io::{self, BufRead, Write};

pub use serde_json::{Value, json};

/// Serves requests until stdin ends. A request that is not JSON, or that the handler
/// rejects, is answered with `{"error": "..."}`: every request line gets exactly one
/// response line.
pub fn serve(mut handler: impl FnMut(&Value) -> Result<Value, String>) {
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let response = match serde_json::from_str::<Value>(&line) {
            Ok(request) => handler(&request).unwrap_or_else(|e| json!({ "error": e })),
            Err(e) => json!({ "error": format!("invalid request: {e}") }),
        };
        if writeln!(stdout, "{response}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
}

/// The request's field `key` as an unsigned integer, `default` when absent, an error
/// naming the field when present but not a non-negative integer or above `max`.
pub fn u64_field(request: &Value, key: &str, default: u64, max: u64) -> Result<u64, String> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            Some(n) => Err(format!("`{key}` is {n}, at most {max} is allowed")),
            None => Err(format!("`{key}` must be a non-negative integer, got {v}")),
        },
    }
}

/// The request's field `key` as a string, `default` when absent.
pub fn str_field<'a>(request: &'a Value, key: &str, default: &'a str) -> Result<&'a str, String> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("`{key}` must be a string, got {v}")),
    }
}

/// The request's field `key` as a boolean, `default` when absent.
pub fn bool_field(request: &Value, key: &str, default: bool) -> Result<bool, String> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("`{key}` must be true or false, got {v}")),
    }
}

/// A large binary result summarized as its size and a hash: `{"bytes": N, "crc32":
/// "8 hex digits"}`. Answers stay one short line however big the result is, and equal
/// bytes always give the same answer.
pub fn digest(bytes: &[u8]) -> Value {
    json!({ "bytes": bytes.len(), "crc32": format!("{:08x}", crc32fast::hash(bytes)) })
}

/// `x` rounded to `digits` significant decimal digits. Numeric answers go through it so
/// that they do not depend on which SIMD code path (AVX2, AVX-512) computed them, natively
/// or in a microVM. Zero, infinities and NaN are returned unchanged.
pub fn round_sig(x: f64, digits: u32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let exponent = digits as i32 - 1 - x.abs().log10().floor() as i32;
    if exponent >= 0 {
        let scale = 10f64.powi(exponent);
        (x * scale).round() / scale
    } else {
        let scale = 10f64.powi(-exponent);
        (x / scale).round() * scale
    }
}

/// Prepares the process for crates that use rayon (candle) in reap's guest, which has
/// one vCPU and no `clone`: candle's matrix products see one thread and run without
/// parallelism, and rayon's global pool is this thread alone, so parallel iterators
/// run inline and no thread is ever spawned. Freed memory stays in glibc's heap rather
/// than going back to the kernel (glibc otherwise maps and unmaps every large tensor,
/// or trims the heap after each request), so each request reuses the pages of the
/// previous one instead of faulting fresh ones in. Call it first thing in `main`.
#[cfg(feature = "rayon")]
pub fn single_threaded_runtime() {
    // SAFETY: called first thing in `main`, before any other thread exists, so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global()
        .expect("rayon's global pool is built once, first thing in main");
    // SAFETY: mallopt only changes glibc allocator parameters; no allocation is in flight.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_field_defaults_bounds_and_types() {
        let r = json!({"n": 5, "big": 100, "neg": -1, "s": "x"});
        assert_eq!(u64_field(&r, "n", 1, 10), Ok(5));
        assert_eq!(u64_field(&r, "missing", 7, 10), Ok(7));
        assert!(
            u64_field(&r, "big", 1, 10)
                .unwrap_err()
                .contains("at most 10")
        );
        assert!(u64_field(&r, "neg", 1, 10).is_err());
        assert!(u64_field(&r, "s", 1, 10).is_err());
    }

    #[test]
    fn str_field_defaults_and_types() {
        let r = json!({"name": "Ada", "n": 3});
        assert_eq!(str_field(&r, "name", "world"), Ok("Ada"));
        assert_eq!(str_field(&r, "other", "world"), Ok("world"));
        assert!(str_field(&r, "n", "world").is_err());
    }

    #[test]
    fn digest_is_size_and_crc32() {
        assert_eq!(digest(b""), json!({"bytes": 0, "crc32": "00000000"}));
        assert_eq!(
            digest(b"123456789"),
            json!({"bytes": 9, "crc32": "cbf43926"})
        );
    }

    #[test]
    fn bool_field_defaults_and_types() {
        let r = json!({"on": true, "n": 1});
        assert_eq!(bool_field(&r, "on", false), Ok(true));
        assert_eq!(bool_field(&r, "off", false), Ok(false));
        assert!(bool_field(&r, "n", false).is_err());
    }

    #[test]
    fn round_sig_keeps_significant_digits() {
        assert_eq!(round_sig(0.123456789, 5), 0.12346);
        assert_eq!(round_sig(12345.678, 5), 12346.0);
        assert_eq!(round_sig(1234567.0, 3), 1230000.0);
        assert_eq!(round_sig(-0.000987654, 5), -0.00098765);
        assert_eq!(round_sig(0.0, 5), 0.0);
        assert!(round_sig(f64::NAN, 5).is_nan());
    }
}
