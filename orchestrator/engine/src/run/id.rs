//! Run ids: `YYYYMMDD-HHMMSS-` and 48 bits from the operating system's CSPRNG, so runs
//! started in the same second (schedules, several daemons) cannot collide; the store
//! refuses a duplicate id anyway and the engine then draws another.

use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

/// A new run id for a run starting at `now`.
pub(crate) fn new_run_id(now: SystemTime) -> Result<String, String> {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let mut random = [0u8; 6];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "the operating system's random number generator failed".to_owned())?;
    Ok(format!(
        "{}-{}-{}",
        &digits[..8],
        &digits[8..14],
        crate::evidence::hex(&random)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_same_instant_differ() {
        let now = SystemTime::now();
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_run_id(now).unwrap()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = ids.iter().next().unwrap();
        assert_eq!(id.len(), "20261201-123456-".len() + 12, "{id}");
    }
}
