//! The `herald` command: parse the command line, bind, serve.

use clap::Parser;

fn main() {
    let config = herald::Config::parse();
    if let Err(why) = config.validate() {
        use clap::CommandFactory;
        herald::Config::command()
            .error(clap::error::ErrorKind::ValueValidation, why)
            .exit();
    }
    if let Err(why) = herald::check_tls(&config) {
        eprintln!("herald: {why}");
        std::process::exit(2);
    }
    herald::init_logging(config.log_format);
    let listener = match herald::sockopt::bind(config.listen, &config.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald: cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = herald::run(listener, config, herald::Shutdown::on_signals()) {
        eprintln!("herald: {e}");
        std::process::exit(1);
    }
}
