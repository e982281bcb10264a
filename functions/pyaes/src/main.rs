//! FunctionBench's `pyaes`: AES-256 in CTR mode encrypts a text of `length` bytes
//! (default 4096) and decrypts it back, `rounds` times (default 100), each round with a
//! fresh counter as the original does.
//!
//! The key schedule is expanded during init and held, as a service holding its key
//! would. The text is generated from the requested length with a constant-seeded
//! generator (letters and digits, like the original's random message), so answers are
//! deterministic: `{"length", "rounds", "ciphertext": {"bytes", "crc32"}, "roundtrip"}`.

use aes::Aes256;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use reap_function::{Value, digest, json, serve, u64_field};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// A CTR keystream over an already expanded key, its counter starting at `iv`.
fn ctr_stream(cipher: Aes256, iv: &[u8; 16]) -> Aes256Ctr {
    Aes256Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher, iv.into()))
}

/// The function's secret key (the original benchmark's is a fixed 32-byte string too).
const KEY: [u8; 32] = *b"reap-benchmark-pyaes-key-0123456";
/// Initial counter block: pyaes' `Counter()` starts at 1.
const IV: [u8; 16] = 1u128.to_be_bytes();

const MAX_LENGTH: u64 = 16 << 20;
const MAX_ROUNDS: u64 = 10_000;
/// Bound on `length * rounds`, so that one request stays around a second.
const MAX_WORK: u64 = 1 << 30;

/// The state a warm instance holds: the expanded key.
struct Pyaes {
    cipher: Aes256,
}

impl Pyaes {
    fn new(key: &[u8; 32]) -> Self {
        Pyaes {
            cipher: Aes256::new(key.into()),
        }
    }

    /// Applies the CTR keystream (counter starting at [`IV`]) to `buf` in place: this
    /// both encrypts and decrypts.
    fn apply(&self, buf: &mut [u8]) {
        let mut ctr = ctr_stream(self.cipher.clone(), &IV);
        ctr.apply_keystream(buf);
    }

    /// Runs the benchmark: `rounds` times, encrypts `text` and decrypts the result.
    /// Returns the last ciphertext and whether every decryption gave `text` back.
    fn run(&self, text: &[u8], rounds: u64) -> (Vec<u8>, bool) {
        let mut ciphertext = text.to_vec();
        let mut plaintext = vec![0; text.len()];
        let mut roundtrip = true;
        for _ in 0..rounds {
            ciphertext.copy_from_slice(text);
            self.apply(&mut ciphertext);
            plaintext.copy_from_slice(&ciphertext);
            self.apply(&mut plaintext);
            roundtrip &= plaintext == text;
        }
        (ciphertext, roundtrip)
    }

    fn answer(&self, request: &Value) -> Result<Value, String> {
        let length = u64_field(request, "length", 4096, MAX_LENGTH)?;
        let rounds = u64_field(request, "rounds", 100, MAX_ROUNDS)?;
        if length.saturating_mul(rounds) > MAX_WORK {
            return Err(format!("`length` × `rounds` is at most {MAX_WORK}"));
        }
        let text = message(length as usize);
        let (ciphertext, roundtrip) = self.run(&text, rounds);
        Ok(json!({
            "length": length,
            "rounds": rounds,
            "ciphertext": digest(&ciphertext),
            "roundtrip": roundtrip,
        }))
    }
}

/// A text of `length` ASCII letters and digits, the same for the same length.
fn message(length: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0000 ^ length as u64);
    (0..length).map(|_| rng.alphanumeric() as u8).collect()
}

fn main() {
    let pyaes = Pyaes::new(&KEY);
    serve(|request| pyaes.answer(request));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_nist_ctr_aes256_vector() {
        // NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt, first block.
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .try_into()
            .unwrap();
        let iv: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let mut block = hex("6bc1bee22e409f96e93d7e117393172a");
        let mut ctr = ctr_stream(Aes256::new(&key.into()), &iv);
        ctr.apply_keystream(&mut block);
        assert_eq!(block, hex("601ec313775789a5b7a7f504bbf3d228"));
    }

    #[test]
    fn decrypt_of_encrypt_is_identity() {
        let pyaes = Pyaes::new(&KEY);
        let text = message(1000);
        let mut buf = text.clone();
        pyaes.apply(&mut buf);
        assert_ne!(buf, text);
        pyaes.apply(&mut buf);
        assert_eq!(buf, text);
        let (ciphertext, roundtrip) = pyaes.run(&text, 3);
        assert!(roundtrip);
        assert_eq!(ciphertext.len(), 1000);
    }

    #[test]
    fn message_is_deterministic_alphanumeric() {
        assert_eq!(message(64), message(64));
        assert!(message(500).iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let pyaes = Pyaes::new(&KEY);
        let a = pyaes.answer(&json!({})).unwrap();
        assert_eq!(a["length"], 4096);
        assert_eq!(a["rounds"], 100);
        assert_eq!(a["ciphertext"]["bytes"], 4096);
        assert_eq!(a["roundtrip"], true);
        assert_eq!(a, pyaes.answer(&json!({})).unwrap());
        assert!(pyaes.answer(&json!({"length": "x"})).is_err());
        assert!(pyaes.answer(&json!({"length": MAX_LENGTH + 1})).is_err());
        assert!(
            pyaes
                .answer(&json!({"length": MAX_LENGTH, "rounds": 1000}))
                .is_err()
        );
    }
}
