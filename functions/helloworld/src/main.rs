//! The smallest reap function: `{"name": "Ada"}` is answered with
//! `{"greeting": "Hello, Ada!"}`; `{}` greets the world.

use reap_function::{Value, json, serve, str_field};

fn answer(request: &Value) -> Result<Value, String> {
    let name = str_field(request, "name", "world")?;
    Ok(json!({ "greeting": format!("Hello, {name}!") }))
}

fn main() {
    serve(answer);
}
