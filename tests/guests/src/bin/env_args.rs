//! Prints its arguments, its environment, and a few process facts, one per line.
fn main() {
    for a in std::env::args() {
        println!("arg {a}");
    }
    let mut vars: Vec<_> = std::env::vars().collect();
    vars.sort();
    for (k, v) in vars {
        println!("env {k}={v}");
    }
    println!("pid {}", std::process::id());
    println!("cwd {:?}", std::env::current_dir().ok());
    let code = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
