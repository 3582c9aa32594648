//! One module per subcommand.

pub mod flatten;
