//! The mapping settings of a route (the flat settings are the default route's): the six raw
//! values as configured, for printing, and the validated [`MappingOptions`] they build.

use crate::transform::MappingOptions;

#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub event_naming: String,
    pub event_prefix: String,
    pub anonymous: String,
    pub include_event_types: Vec<String>,
    pub exclude_event_types: Vec<String>,
    pub drop_properties: Vec<String>,
    /// Built from the six values above.
    pub options: MappingOptions,
}

impl MappingSettings {
    /// Validates the six values; `Err((key, message))` names the one that was refused.
    pub(super) fn build(
        event_naming: String,
        event_prefix: String,
        anonymous: String,
        include_event_types: Vec<String>,
        exclude_event_types: Vec<String>,
        drop_properties: Vec<String>,
    ) -> Result<Self, (&'static str, String)> {
        let options = MappingOptions::from_parts(
            Some(&event_naming),
            Some(&event_prefix),
            Some(&anonymous),
            &include_event_types,
            &exclude_event_types,
            &drop_properties,
        )
        .map_err(|m| {
            let alone = |n, p, a, i: &[String], e: &[String]| {
                MappingOptions::from_parts(n, p, a, i, e, &[]).is_err()
            };
            let key = if alone(Some(&event_naming), None, None, &[], &[]) {
                "event_naming"
            } else if alone(None, Some(&event_prefix), None, &[], &[]) {
                "event_prefix"
            } else if alone(None, None, Some(&anonymous), &[], &[]) {
                "anonymous"
            } else if alone(None, None, None, &include_event_types, &[]) {
                "include_event_types"
            } else if alone(None, None, None, &[], &exclude_event_types) {
                "exclude_event_types"
            } else {
                "drop_properties"
            };
            (key, m)
        })?;
        Ok(Self {
            event_naming,
            event_prefix,
            anonymous,
            include_event_types,
            exclude_event_types,
            drop_properties,
            options,
        })
    }

    /// The six settings as TOML key/value pairs, in the order `check-config` prints them.
    pub(super) fn toml_values(&self) -> [(&'static str, toml::Value); 6] {
        let s = |v: &str| toml::Value::String(v.to_owned());
        let a = |v: &[String]| toml::Value::Array(v.iter().map(|x| s(x)).collect());
        [
            ("event_naming", s(&self.event_naming)),
            ("event_prefix", s(&self.event_prefix)),
            ("anonymous", s(&self.anonymous)),
            ("include_event_types", a(&self.include_event_types)),
            ("exclude_event_types", a(&self.exclude_event_types)),
            ("drop_properties", a(&self.drop_properties)),
        ]
    }
}
