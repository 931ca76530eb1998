//! The explicit plugin registry: every action this build knows, plugin by plugin.

use drover_model::Config;
use drover_plugin_api::Registry;

/// All built-in actions, plus one `ext.NAME` per external plugin of the config.
pub fn build(config: Option<&Config>) -> Registry {
    let mut reg = Registry::new();
    drover_plugin_exec::register(&mut reg);
    drover_plugin_http::register(&mut reg);
    drover_plugin_manual::register(&mut reg);
    drover_plugin_postgres::register(&mut reg);
    drover_plugin_s3::register(&mut reg);
    drover_plugin_kubernetes::register(&mut reg);
    if let Some(config) = config {
        drover_plugin_exec::register_external(&mut reg, &config.plugins);
    }
    reg
}
