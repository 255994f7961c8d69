//! `transform FILE`: the Heap requests `serve` would send for a Currents payload; no network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use currents_heap::config::{DEFAULT_ROUTE, HeapAppId, SettingsArgs};
use currents_heap::delivery::BudgetShape;
use currents_heap::routing::DRY_RUN_APP_ID;
use currents_heap::transform::{self, MappingOptions, TransformOutput};

use super::load::load;

#[derive(clap::Args)]
pub(super) struct TransformArgs {
    /// The payload file; `-` reads standard input. At most --max-body-bytes (8 MiB), as in
    /// serve.
    file: PathBuf,
    /// Map with this route's app id and mapping options (`default`: the flat settings).
    #[arg(long)]
    route: Option<String>,
    #[command(flatten)]
    settings: SettingsArgs,
}

pub(super) fn run(args: &TransformArgs) -> ExitCode {
    let settings = match load(&args.settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let name = args.route.as_deref().unwrap_or(DEFAULT_ROUTE);
    let Some(route) = settings.route(name) else {
        let known: Vec<&str> = settings.all_routes().map(|r| r.name).collect();
        eprintln!(
            "currents-heap: no route named {name:?} (configured: {})",
            known.join(", ")
        );
        return ExitCode::from(2);
    };
    // A dry run: without an app id the default route maps with the placeholder serve's
    // --dry-run uses.
    let app_id = route.heap_app_id.map_or(DRY_RUN_APP_ID, HeapAppId::as_str);
    // Never more than serve would take in one request: `transform /dev/zero` must not grow
    // without bound.
    let limit = settings.max_body_bytes;
    let payload = match read_payload(&args.file, limit) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // The same batch size serve uses: the app budget's burst caps it.
    let batch = BudgetShape::new(
        route.heap_events_per_minute,
        settings.heap_budget_window,
        settings.heap_batch_size as u32,
    )
    .burst as usize;
    let mapping = MappingOptions::from(route.mapping);
    let max_bytes = usize::try_from(settings.heap_max_request_bytes).unwrap_or(usize::MAX);
    match transform::transform_payload(&payload, &mapping, app_id, batch, max_bytes) {
        Ok(out) => {
            print_output(&out);
            ExitCode::SUCCESS
        }
        Err(reasons) => {
            eprintln!("{reasons}");
            ExitCode::FAILURE
        }
    }
}

/// The payload of `file` (`-`: standard input), at most `limit` bytes.
fn read_payload(file: &Path, limit: u64) -> Result<Vec<u8>, ExitCode> {
    let payload = if file.as_os_str() == "-" {
        read_at_most(std::io::stdin().lock(), limit)
    } else {
        std::fs::File::open(file).and_then(|f| read_at_most(f, limit))
    };
    match payload {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            eprintln!(
                "currents-heap: {} is larger than {limit} bytes, the largest request body serve \
                 accepts (--max-body-bytes / CURRENTS_HEAP_MAX_BODY_BYTES / max_body_bytes); \
                 Braze would get a 413 and split such a batch",
                file.display()
            );
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("currents-heap: cannot read {}: {e}", file.display());
            Err(ExitCode::FAILURE)
        }
    }
}

/// Everything `input` holds if that is at most `limit` bytes, else `None`; reads at most
/// `limit + 1` bytes either way.
fn read_at_most(input: impl std::io::Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut input.take(limit.saturating_add(1)), &mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// The requests on stdout, one JSON object per line; the summary and the reasons on stderr.
fn print_output(out: &TransformOutput) {
    let mut stdout = std::io::stdout().lock();
    for r in &out.requests {
        let _ = writeln!(
            stdout,
            "{{\"endpoint\":{},\"body\":{}}}",
            r["endpoint"], r["body"]
        );
    }
    let mapped = out
        .requests
        .iter()
        .filter(|r| r["endpoint"] == "/api/track")
        .map(|r| r["body"]["events"].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    eprintln!(
        "{mapped} events mapped, {} skipped, {} duplicates in {} requests; {} values dropped",
        out.skipped.len(),
        out.duplicates.len(),
        out.requests.len(),
        out.dropped.len()
    );
    for (index, d) in &out.dropped {
        eprintln!(
            "dropped value {} of event {index}: {} (the rest of the event is sent)",
            d.path,
            d.reason.as_str()
        );
    }
    for (index, id, reason) in &out.skipped {
        eprintln!("skipped event {index} (id {id:?}): {}", reason.as_str());
    }
    for (index, id) in &out.duplicates {
        eprintln!("duplicate event {index} (id {id:?}): an earlier event has the same id");
    }
}
