//! One module per subcommand.

pub mod cmdb;
pub mod continuity;
pub mod plan;
pub mod records;
pub mod run;
pub mod runs;
pub mod schema;
pub mod validate;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), crate::Failure> {
    let s = serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?;
    println!("{s}");
    Ok(())
}

/// `unknown WHAT `NAME`` with a did-you-mean for the closest of `candidates`, as a
/// usage error (exit 2): the one message for every name given on the command line.
pub fn unknown<'a>(what: &str, name: &str, candidates: impl IntoIterator<Item = &'a str>) -> crate::Failure {
    crate::Failure::Usage(anyhow::anyhow!(
        "unknown {what} `{name}`{}",
        drover_model::diag::did_you_mean(name, candidates)
    ))
}
