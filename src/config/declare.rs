//! The machinery behind the settings table (`table.rs`): from one declaration per setting, the
//! `settings!` macro makes the clap arguments, the TOML file keys (top level and `[[route]]`),
//! the layering (file < environment < flag), the parsing with errors that name the setting, and
//! the lines `check-config` prints.
//!
//! Nothing here names a setting: to add or change one, edit `table.rs` only (and the README's
//! settings table, which a test holds to the declarations).

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, ValueParser, ValueRange};

use super::sources::{Scalar, Tokens};
use super::values::{ConfigError, Decl, Raw};

/// How a setting is written: the type clap and the TOML file give it, and its flag's shape.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// A string in the file.
    Text,
    /// A number or a string in the file (`15000`, `"10GiB"`).
    Scalar,
    /// A comma-separated list on the command line, a string or an array in the file.
    List,
    /// A list of secrets: like [`Kind::List`], and the environment value is never shown.
    Secret,
    /// One secret: a string in the file, and the environment value is never shown.
    SecretText,
    /// A file or directory.
    Path,
    /// On or off: `--flag` alone means on, `--flag=false` off.
    Switch,
}

impl Kind {
    pub(super) fn num_args(self) -> ValueRange {
        match self {
            Kind::Switch => ValueRange::new(0..=1),
            _ => ValueRange::new(1),
        }
    }

    pub(super) fn missing(self) -> Option<&'static str> {
        matches!(self, Kind::Switch).then_some("true")
    }

    pub(super) fn value_parser(self) -> ValueParser {
        match self {
            Kind::Switch => BoolishValueParser::new().into(),
            Kind::Path => ValueParser::path_buf(),
            _ => ValueParser::string(),
        }
    }

    pub(super) fn secret(self) -> bool {
        matches!(self, Kind::Secret | Kind::SecretText)
    }
}

/// The type clap gives a setting of this kind.
macro_rules! arg_ty {
    (Switch) => {
        bool
    };
    (Path) => {
        std::path::PathBuf
    };
    ($other:ident) => {
        String
    };
}

/// The type the TOML file gives a setting of this kind.
macro_rules! file_ty {
    (Text) => {
        String
    };
    (Scalar) => {
        Scalar
    };
    (List) => {
        Tokens
    };
    (Secret) => {
        Tokens
    };
    (SecretText) => {
        String
    };
    (Path) => {
        std::path::PathBuf
    };
    (Switch) => {
        bool
    };
}

macro_rules! opt {
    () => {
        None
    };
    ($v:expr) => {
        Some($v)
    };
}

/// A value from one layer (flag/env or file).
pub(super) trait Given {
    fn raw(self) -> Raw;
}

impl Given for String {
    fn raw(self) -> Raw {
        Raw::Text(self)
    }
}

impl Given for PathBuf {
    fn raw(self) -> Raw {
        Raw::Path(self)
    }
}

impl Given for bool {
    fn raw(self) -> Raw {
        Raw::Bool(self)
    }
}

impl Given for Scalar {
    fn raw(self) -> Raw {
        Raw::Text(self.to_string())
    }
}

impl Given for Tokens {
    fn raw(self) -> Raw {
        match self {
            Tokens::One(s) => Raw::Text(s),
            Tokens::Many(v) => Raw::List(v),
        }
    }
}

/// A parser of a setting that always has a value (its default when not given).
pub(super) fn need<T>(
    parse: impl Fn(Raw) -> Result<T, String>,
) -> impl Fn(Option<Raw>) -> Result<T, String> {
    move |raw| raw.map_or_else(|| Err("has no value".to_owned()), &parse)
}

/// A parser of a setting that may be unset.
pub(super) fn maybe<T>(
    parse: impl Fn(Raw) -> Result<T, String>,
) -> impl Fn(Option<Raw>) -> Result<Option<T>, String> {
    move |raw| raw.map(&parse).transpose()
}

/// Lays the flag/env value over the file's, falls back to the default, and parses the result;
/// an error names the setting and the layer its value came from.
pub(super) fn layer<T>(
    decl: &Decl,
    arg: Option<impl Given>,
    file: Option<impl Given>,
    parse: impl Fn(Option<Raw>) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let (raw, source) = match (arg, file) {
        (Some(a), _) => (Some(a.raw()), "given by flag or environment"),
        (None, Some(f)) => (Some(f.raw()), "given in the configuration file"),
        (None, None) => (decl.default.map(|d| Raw::Text(d.to_owned())), "the default"),
    };
    parse(raw).map_err(|m| ConfigError::given(decl, source, m))
}

/// A `[[route]]` value if the table gives one, else the flat setting's (inherited).
pub(super) fn inherit<T: Clone>(
    inherited: &T,
    given: Option<impl Given>,
    parse: impl Fn(Option<Raw>) -> Result<T, String>,
) -> Result<T, String> {
    match given {
        Some(g) => parse(Some(g.raw())),
        None => Ok(inherited.clone()),
    }
}

/// The help of a flag: its doc comment, one paragraph, and its default.
pub(super) fn help(doc: &[&str], default: Option<&str>) -> String {
    let mut text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    if text.ends_with('.') {
        text.pop();
    }
    match default {
        Some(d) if !d.is_empty() => text.push_str(&format!(" [default: {d}]")),
        _ => {}
    }
    text
}

/// A value as `check-config` prints it: TOML text, or `None` when not set.
pub(super) trait Show {
    fn show(&self) -> Option<String>;
}

/// One printed line: `key = value`, or `# key = (not set...)`.
pub(super) fn line(out: &mut String, key: &str, value: Option<String>, unset: Option<&str>) {
    match (value, unset) {
        (Some(v), _) => out.push_str(&format!("{key} = {v}\n")),
        (None, Some(why)) => out.push_str(&format!("# {key} = (not set: {why})\n")),
        (None, None) => out.push_str(&format!("# {key} = (not set)\n")),
    }
}

/// The whole settings table. See `table.rs` for the grammar of a declaration:
///
/// ```text
/// /// Help text (the flag's help; the README says more).
/// key: Type = parser, Kind, env "ENV_NAME" [, default "text"] [, unset "why"];
/// ```
///
/// `flat` settings exist at the top level only; `shared` ones also in `[[route]]` tables, where
/// a route that does not give one inherits the flat value; `route_only` keys exist in
/// `[[route]]` tables only (the route's own parsing is in `routes.rs`).
macro_rules! settings {
    (
        flat { $($flat:tt)* }
        shared { $($shared:tt)* }
        route_only { $( $(#[doc = $rdoc:literal])* $rkey:ident : $rkind:ident ; )* }
    ) => {
        settings!(@layers [$($flat)* $($shared)*] [$($shared)*]
            [$( $(#[doc = $rdoc])* $rkey : $rkind ; )*]);
        settings!(@values Flat, "The flat settings", [$($flat)*]);
        settings!(@values Shared, "The settings a `[[route]]` may override", [$($shared)*]);
        settings!(@inherit [$($shared)*]);
    };

    // The clap arguments, the file keys and one `Decl` constant a setting.
    (@layers
        [$( $(#[doc = $doc:literal])*
            $key:ident : $ty:ty = $parse:expr, $kind:ident, env $env:literal
            $(, default $def:literal)? $(, unset $unset:literal)? ; )*]
        [$( $(#[doc = $sdoc:literal])*
            $skey:ident : $sty:ty = $sparse:expr, $skind:ident, env $senv:literal
            $(, default $sdef:literal)? $(, unset $sunset:literal)? ; )*]
        [$( $(#[doc = $rdoc:literal])* $rkey:ident : $rkind:ident ; )*]
    ) => {
        /// The flag / environment forms of every setting. `None` means "not given at this layer".
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct SettingsArgs {
            /// TOML configuration file (at most 1 MiB); flags and environment variables override it.
            #[arg(long, env = "CURRENTS_HEAP_CONFIG", value_name = "FILE")]
            pub config: Option<std::path::PathBuf>,
            $(
                #[arg(
                    long,
                    env = $env,
                    help = help(&[$($doc),*], opt!($($def)?)),
                    num_args = Kind::$kind.num_args(),
                    default_missing_value = Kind::$kind.missing(),
                    value_parser = Kind::$kind.value_parser(),
                    hide_env_values = Kind::$kind.secret(),
                )]
                pub $key: Option<arg_ty!($kind)>,
            )*
        }

        /// The TOML file. Keys are the flag names with `_` for `-`; unknown keys are errors.
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $( $(#[doc = $doc])* pub $key: Option<file_ty!($kind)>, )*
            /// `[[route]]` tables.
            #[serde(default)]
            pub route: Vec<RouteFile>,
        }

        /// One `[[route]]` table as written.
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RouteFile {
            $( $(#[doc = $rdoc])* pub $rkey: Option<file_ty!($rkind)>, )*
            $( $(#[doc = $sdoc])* pub $skey: Option<file_ty!($skind)>, )*
        }

        /// One constant a setting, named as its TOML key: for errors about that setting.
        #[allow(non_upper_case_globals)]
        pub(crate) mod setting {
            use super::Decl;
            $( pub(crate) const $key: Decl =
                Decl { key: stringify!($key), env: $env, default: opt!($($def)?) }; )*
        }

        /// Every declared setting, in declaration order (flat, then shared).
        pub const DECLARATIONS: &[Decl] = &[ $( setting::$key, )* ];
    };

    // The parsed values of a group, how they are layered and how they are printed.
    (@values $name:ident, $what:literal,
        [$( $(#[doc = $doc:literal])*
            $key:ident : $ty:ty = $parse:expr, $kind:ident, env $env:literal
            $(, default $def:literal)? $(, unset $unset:literal)? ; )*]
    ) => {
        #[doc = concat!($what, ", each parsed and validated on its own.")]
        #[derive(Debug, Clone)]
        pub(super) struct $name {
            $( pub $key: $ty, )*
        }

        impl $name {
            pub(super) fn from_layers(
                args: &SettingsArgs,
                file: &FileConfig,
            ) -> Result<Self, ConfigError> {
                Ok(Self {
                    $( $key: layer(&setting::$key, args.$key.clone(), file.$key.clone(), $parse)?, )*
                })
            }

            pub(super) fn print(&self, out: &mut String) {
                $( line(out, stringify!($key), self.$key.show(), opt!($($unset)?)); )*
            }
        }
    };

    // A route's values: its own where it gives them, else the flat ones.
    (@inherit
        [$( $(#[doc = $doc:literal])*
            $key:ident : $ty:ty = $parse:expr, $kind:ident, env $env:literal
            $(, default $def:literal)? $(, unset $unset:literal)? ; )*]
    ) => {
        impl Shared {
            /// This route's values: its own where it gives them, else these (the flat ones).
            pub(super) fn overridden(
                &self,
                route: &RouteFile,
                error: impl Fn(&str, String) -> ConfigError,
            ) -> Result<Self, ConfigError> {
                Ok(Self {
                    $( $key: inherit(&self.$key, route.$key.clone(), $parse)
                        .map_err(|m| error(stringify!($key), m))?, )*
                })
            }
        }
    };
}
