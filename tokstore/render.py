"""The text the CLI prints for the inspect verbs (info / show / ls / stats / verify).

Each function takes the plain data tokstore.inspect returns and formats it; the --json forms of
the verbs print that data as it is, so nothing here decides anything about the store.
"""
from __future__ import annotations

import re

from .inspect import VerifyReport

# what a terminal acts on instead of showing: C0 controls but tab and newline (escape sequences,
# carriage return, bell), DEL, C1 controls (0x9b is CSI), the line and paragraph separators and
# the bidirectional marks and overrides (U+202E shows "exe.png" as "gnp.exe")
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with what a terminal would act on written as escapes (\\x1b, \\u202e): names,
    captions and paths come from untrusted files, and the CLI prints them."""
    return _UNSHOWN.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04x}", text)


def json_terminal_safe(text: str) -> str:
    """JSON text with the same characters written as JSON escapes (\\u202e): the same values
    for a program, nothing a terminal acts on (json.dumps escapes only C0 controls)."""
    return _UNSHOWN.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def render_info(info: dict) -> str:
    """What `tokstore info` prints for inspect.store_info's dict."""
    from vqvae import VQVAEConfig  # here, not at the top: vqvae imports torch (seconds)

    unit = f" ({info['frames']} frames at {info['unit_length']} per code)" if info["unit_length"] else ""
    model = " ".join(VQVAEConfig.from_dict(info["model_config"]).to_flags()) if info["model_config"] else "-"
    sources = info["source_paths"] or {}
    size = info["size_bytes"]
    lines = [
        f"store:        {info['path']} ({info['backend']}, format {info['format_version']}, "
        f"written by tokstore {info['written_by'] or '?'})",
        f"samples:      {info['samples']}",
        f"codes:        {info['codes']}{unit}",
        f"tokens:       {info['tokens']} (codes + one end token per sample)",
        f"codebook:     {info['codebook_size']} codes, end token {info['end_token']}, pad token "
        f"{info['pad_token']}; stored as {info['code_dtype']}, legacy {info['legacy_code_dtype'] or '-'}",
        f"model:        {model}",
        f"checkpoint:   sha256 {info['checkpoint_sha256'] or '-'}",
        f"statistics:   sha256 {info['stats_sha256'] or '-'}",
        f"encoded:      precision {info['precision'] or '-'} on {info['device'] or '-'}, "
        f"crop {info['crop_policy'] or '-'}, torch {info.get('torch_version') or '-'}",
        *_render_exactness(info),
        *(f"source:       {key} = {value}" for key, value in sources.items() if value is not None),
        f"skipped:      {len(info['skipped'])}",
        *(f"  {entry.get('name')}: {entry.get('reason')}" for entry in info["skipped"]),
        f"size on disk: {'-' if size is None else f'{size} bytes ({size / 2**20:.2f} MiB)'}",
    ]
    return "\n".join(lines)


def _render_exactness(info: dict) -> list[str]:
    """The exactness lines of `info`: mode, margin and what the re-check did."""
    mode, found = info.get("exactness_mode"), info.get("exactness") or {}
    if not mode:
        return ["exactness:    not recorded (a store from before exactness was recorded)"]
    lines = [f"exactness:    {mode}" + (" (codes equal the original's, checked as below)"
                                       if mode == "exact" else "")]
    if mode == "mixed":
        lines.append("encoders:     " + "; ".join(
            f"{e.get('mode')} ({e.get('device')} {e.get('precision')}, torch {e.get('torch_version')})"
            for e in info.get("encoders") or []))
    if found.get("margin") and not found.get("calibration_tokens"):
        lines.append(f"  margin {found['margin']:.3g} ({found.get('decision_variable')}; not "
                     "calibrated: no batch of several motions at the start to measure on)")
    elif found.get("margin"):
        lines.append(f"  margin {found['margin']:.3g} ({found.get('decision_variable')}; "
                     f"{found.get('safety_factor'):g}x the measured deviation "
                     f"{found.get('measured_deviation', 0):.3g}, floor {found.get('margin_floor'):g}), "
                     f"calibrated on {found.get('calibration_tokens', 0)} tokens")
    elif mode == "exact":
        lines.append("  every motion was encoded alone (no batch of several motions to re-check)")
    if found.get("margin"):
        lines.append(f"  re-encoded alone: {found.get('rows_reencoded', 0)} rows, largest deviation "
                     f"{found.get('max_reencode_deviation', 0):.3g} (stops above "
                     f"{found.get('stop_fraction'):g} of the margin); tokens changed by "
                     f"re-encoding: {found.get('tokens_changed', 0)}")
    if found.get("agreement"):
        a = found["agreement"]
        lines.append(f"  agreement with exact codes: {a['share']:.2%} of {a['codes']} codes on "
                     f"{a['motions']} motions")
    return lines


def render_show(sample: dict) -> str:
    """What `tokstore show` prints for inspect.show_sample's dict."""
    return "\n".join([f"name:   {sample['name']}", f"length: {sample['length']} codes",
                      "codes:  " + " ".join(map(str, sample["codes"])), "texts:",
                      *(f"  {line}" for line in sample["texts"])])


def render_ls(rows: list[dict]) -> str:
    """One sample a line, tab-separated (names may hold spaces): length, name, first caption."""
    return "\n".join(f"{row['length']}\t{row['name']}\t{row['caption']}" for row in rows)


def render_stats(stats: dict) -> str:
    """What `tokstore stats` prints for inspect.code_stats's dict."""
    q = stats["lengths"]
    lengths = (f"min {q['min']}, mean {q['mean']:.1f}, p5 {q['p5']:g}, p25 {q['p25']:g}, "
               f"median {q['p50']:g}, p75 {q['p75']:g}, p95 {q['p95']:g}, max {q['max']}") if q else "-"
    return "\n".join([
        f"samples:      {stats['samples']}",
        f"codes:        {stats['codes']}",
        f"active codes: {stats['active_codes']} of {stats['codebook_size']} ({stats['active_share']:.2%})",
        f"perplexity:   {stats['perplexity']:.2f}",
        f"lengths:      {lengths}",
        "top codes:    code  count  share",
        *(f"{t['code']:>18} {t['count']:>6} {t['share']:>6.2%}" for t in stats["top_codes"]),
    ])


def render_verify(report: VerifyReport) -> str:
    """What `tokstore verify` prints: each problem, the re-encoding agreement, the verdict."""
    lines = [f"FAIL {problem}" for problem in report.problems]
    found = report.reencoding
    if found is not None:
        lines.append(f"re-encoded {len(found.samples)} samples: {found.exact} exact, token agreement "
                     f"{found.agreement:.2%} ({found.agreeing}/{found.tokens})")
        if found.checkpoint_matches is not None:
            lines.append("checkpoint: sha256 " + ("matches the one recorded at build" if found.checkpoint_matches
                                                  else "DIFFERS from the one recorded at build"))
    lines.append("verify: OK" if report.ok else f"verify: FAILED ({len(report.problems)} problems)")
    return "\n".join(lines)
