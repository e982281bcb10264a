//! FunctionBench's `json_serdes`: parses a JSON document (`json.loads`) and serializes
//! it again (`json.dumps`).
//!
//! During init the function generates a deterministic document of about 1 MB shaped like
//! an API export: customers with nested addresses, geo coordinates, tags, friends and
//! orders with line items, strings with escapes and non-ASCII text, numbers, booleans
//! and nulls. It holds the document's text, the input a real instance would have
//! fetched. A request parses the text into a dynamic JSON value and serializes it,
//! compact or `pretty` (default false), `rounds` times (default 1, at most 20).
//! Object keys come out sorted (serde_json's map is ordered by key).
//! Answer: `{"rounds", "pretty", "records", "input_bytes", "output": {"bytes", "crc32"}}`.

use reap_function::{Value, bool_field, digest, json, serve, u64_field};

const MAX_ROUNDS: u64 = 20;
/// Customers in the document: about 1 MB of compact JSON.
const CUSTOMERS: usize = 900;

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Niklaus",
    "Radia", "Tony", "Zoë", "José", "Søren", "Łukasz", "Ngozi", "Hiroshi",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
    "Wirth", "Perlman", "Hoare", "Müller", "O'Neil", "Nakamura", "Okafor",
];
const CITIES: &[&str] = &[
    "Zürich",
    "Lisbon",
    "Osaka",
    "Lagos",
    "Montréal",
    "Kraków",
    "Austin",
    "Pune",
    "Tartu",
    "Valparaíso",
    "Cork",
    "Reykjavík",
];
const STREETS: &[&str] = &[
    "Main St",
    "Station Rd",
    "Rue de la Paix",
    "Hauptstraße",
    "Calle Mayor",
];
const TAGS: &[&str] = &[
    "vip",
    "newsletter",
    "beta",
    "wholesale",
    "churn-risk",
    "referral",
    "b2b",
    "gift",
    "eco",
];
const PRODUCTS: &[&str] = &[
    "Mechanical keyboard",
    "USB-C hub",
    "27\" monitor",
    "Noise-cancelling headphones",
    "Standing desk",
    "Webcam 1080p",
    "Ergonomic mouse",
    "Laptop stand",
    "Desk lamp",
];
const STATUSES: &[&str] = &["pending", "paid", "shipped", "delivered", "refunded"];
const NOTES: &[&str] = &[
    "Leave at the door.",
    "Call before delivery: \"ring twice\"",
    "Gift wrap, please ✓",
    "Fragile\tHandle with care",
    "Backslash path C:\\orders\\new",
    "",
];

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// A number with `decimals` decimal places, from an integer: parses back exactly.
fn fixed(rng: &mut fastrand::Rng, range: std::ops::Range<i64>, decimals: i32) -> f64 {
    rng.i64(range) as f64 / 10f64.powi(decimals)
}

fn customer(rng: &mut fastrand::Rng, id: usize) -> Value {
    let (first, last) = (pick(rng, FIRST), pick(rng, LAST));
    let tags: Vec<&str> = (0..rng.usize(0..4)).map(|_| pick(rng, TAGS)).collect();
    let friends: Vec<Value> = (0..rng.usize(0..5))
        .map(|_| json!({ "id": rng.usize(0..CUSTOMERS), "name": format!("{} {}", pick(rng, FIRST), pick(rng, LAST)) }))
        .collect();
    let orders: Vec<Value> = (0..rng.usize(0..5))
        .map(|o| {
            let items: Vec<Value> = (0..rng.usize(1..5))
                .map(|_| {
                    json!({
                        "sku": format!("SKU-{:05}", rng.u32(0..100_000)),
                        "product": pick(rng, PRODUCTS),
                        "quantity": rng.u32(1..6),
                        "unit_price": fixed(rng, 199..99_999, 2),
                    })
                })
                .collect();
            json!({
                "id": format!("ORD-{id:04}-{o}"),
                "status": pick(rng, STATUSES),
                "created": format!("2024-{:02}-{:02}T{:02}:{:02}:00Z", rng.u8(1..13), rng.u8(1..29), rng.u8(0..24), rng.u8(0..60)),
                "items": items,
                "discount": if rng.bool() { Value::Null } else { json!(fixed(rng, 0..5000, 2)) },
                "gift": rng.bool(),
                "notes": pick(rng, NOTES),
            })
        })
        .collect();
    json!({
        "id": id,
        "guid": format!("{:016x}-{:08x}", rng.u64(..), rng.u32(..)),
        "name": { "first": first, "last": last },
        "email": format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), id),
        "active": rng.bool(),
        "age": rng.u8(18..90),
        "balance": fixed(rng, -50_000..5_000_000, 2),
        "registered": format!("20{:02}-{:02}-{:02}", rng.u8(10..24), rng.u8(1..13), rng.u8(1..29)),
        "address": {
            "street": format!("{} {}", rng.u16(1..400), pick(rng, STREETS)),
            "city": pick(rng, CITIES),
            "zip": format!("{:05}", rng.u32(0..100_000)),
            "geo": { "lat": fixed(rng, -90_000_000..90_000_000, 6), "lng": fixed(rng, -180_000_000..180_000_000, 6) },
        },
        "phone": if rng.u8(0..4) == 0 { Value::Null } else { json!(format!("+1-555-{:04}", rng.u16(0..10_000))) },
        "tags": tags,
        "friends": friends,
        "orders": orders,
        "score": rng.u32(0..1000) as f64 / 8.0,
    })
}

/// The generated document as compact JSON text, with its keys in sorted order (as
/// serde_json writes them). Written customer by customer, so that init never holds the
/// whole document as a tree.
fn document() -> String {
    let mut rng = fastrand::Rng::with_seed(0x150);
    let mut text = format!("{{\"count\":{CUSTOMERS},\"customers\":[");
    for id in 0..CUSTOMERS {
        if id > 0 {
            text.push(',');
        }
        text.push_str(&customer(&mut rng, id).to_string());
    }
    let rest = json!({
        "generated": "2024-06-30T12:00:00Z",
        "source": { "system": "crm-export", "region": "eu-west", "paged": false },
        "version": 3,
    });
    text.push_str("],");
    text.push_str(&rest.to_string()[1..]);
    text
}

/// Parses `text` and serializes it again, compact or pretty.
fn round_trip(text: &str, pretty: bool) -> Result<(String, Value), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("parsing: {e}"))?;
    let out = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    };
    Ok((out.map_err(|e| format!("serializing: {e}"))?, value))
}

/// The state a warm instance holds: the document's text.
struct JsonSerdes {
    text: String,
}

impl JsonSerdes {
    fn answer(&self, request: &Value) -> Result<Value, String> {
        let rounds = u64_field(request, "rounds", 1, MAX_ROUNDS)?;
        let pretty = bool_field(request, "pretty", false)?;
        if rounds == 0 {
            return Err("`rounds` must be at least 1".into());
        }
        let (mut out, mut value) = round_trip(&self.text, pretty)?;
        for _ in 1..rounds {
            (out, value) = round_trip(&self.text, pretty)?;
        }
        let records = value["customers"].as_array().map_or(0, Vec::len);
        Ok(json!({
            "rounds": rounds,
            "pretty": pretty,
            "records": records,
            "input_bytes": self.text.len(),
            "output": digest(out.as_bytes()),
        }))
    }
}

fn main() {
    let function = JsonSerdes { text: document() };
    serve(|request| function.answer(request));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_about_a_megabyte_and_deterministic() {
        let text = document();
        assert!(
            (900_000..1_300_000).contains(&text.len()),
            "{} bytes",
            text.len()
        );
        assert_eq!(text, document());
    }

    #[test]
    fn reserialized_document_parses_equal_to_the_original() {
        let text = document();
        let original: Value = serde_json::from_str(&text).unwrap();
        for pretty in [false, true] {
            let (out, value) = round_trip(&text, pretty).unwrap();
            assert_eq!(value, original);
            assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), original);
        }
        // Compact output of the generated (key-sorted) document is the input itself.
        assert_eq!(round_trip(&text, false).unwrap().0, text);
    }

    #[test]
    fn document_is_nested_and_varied() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let customers = doc["customers"].as_array().unwrap();
        assert_eq!(customers.len(), CUSTOMERS);
        assert!(
            customers
                .iter()
                .any(|c| c["orders"][0]["items"][0]["unit_price"].is_f64())
        );
        assert!(customers.iter().any(|c| c["phone"].is_null()));
        assert!(
            customers
                .iter()
                .any(|c| c["address"]["geo"]["lat"].is_f64())
        );
        let text = document();
        assert!(text.contains("\\\"ring twice\\\"") && text.contains('✓') && text.contains("\\t"));
    }

    #[test]
    fn answers_and_bad_requests() {
        let f = JsonSerdes { text: document() };
        let a = f.answer(&json!({})).unwrap();
        assert_eq!(a["records"], CUSTOMERS);
        assert_eq!(a["output"]["bytes"], f.text.len());
        let p = f.answer(&json!({"pretty": true, "rounds": 2})).unwrap();
        assert!(p["output"]["bytes"].as_u64().unwrap() > f.text.len() as u64);
        assert_eq!(p, f.answer(&json!({"pretty": true, "rounds": 2})).unwrap());
        assert!(f.answer(&json!({"rounds": 0})).is_err());
        assert!(f.answer(&json!({"rounds": 21})).is_err());
        assert!(f.answer(&json!({"pretty": "yes"})).is_err());
    }
}
