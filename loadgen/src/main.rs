fn main() { eprintln!("loadgen: not yet implemented"); std::process::exit(2); }
