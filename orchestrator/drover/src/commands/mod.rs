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
