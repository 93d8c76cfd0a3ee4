"""Regenerates the Pinnace tray icons (a small sailing boat) in every state and variant.

Run `python resources/icons/build_icons.py`; the SVGs are committed, this only keeps them
consistent. Variants: `light` (dark ink, for light panels), `dark` (light ink, for dark panels),
`template` (black + alpha only, for the macOS menu bar, where the system tints it).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
STATES = ("stopped", "starting", "starting-alt", "running", "paused", "error")
INK = {"light": "#263241", "dark": "#eef2f6", "template": "#000000"}
BADGE = {
    "light": {"running": "#1f9d55", "starting": "#d98a0b", "paused": "#d98a0b", "error": "#d83a3a"},
    "dark": {"running": "#3ddc7a", "starting": "#f5b640", "paused": "#f5b640", "error": "#ff5c5c"},
    "template": {"running": "#000000", "starting": "#000000", "paused": "#000000", "error": "#000000"},
}

HULL = "M3 20.5H29C28.2 24.6 25.8 27.5 22.4 27.5H9.6C6.2 27.5 3.8 24.6 3 20.5Z"
MAST = '<rect x="15.2" y="2.5" width="1.6" height="18" rx="0.8"/>'
MAIN_SAIL = "M18 4.5V18.5H27.5Z"
JIB = "M14 7.5V18.5H6.5Z"
# Badge in the free top-right corner; the error badge has an exclamation mark and the paused badge
# two pause bars cut out (even-odd), so they read the same in the monochrome template.
BADGE_DOT = '<circle cx="26" cy="6.5" r="4.5" fill="{c}"/>'
BADGE_RING = '<circle cx="26" cy="6.5" r="3.6" fill="none" stroke="{c}" stroke-width="1.8"/>'
BADGE_ERROR = (
    '<path fill="{c}" fill-rule="evenodd" d="M26 1.5A5 5 0 1 1 26 11.5A5 5 0 1 1 26 1.5Z'
    'M25.1 3.6H26.9L26.6 7.4H25.4Z M25.1 8.5H26.9V10.1H25.1Z"/>'
)
BADGE_PAUSED = (
    '<path fill="{c}" fill-rule="evenodd" d="M26 1.5A5 5 0 1 1 26 11.5A5 5 0 1 1 26 1.5Z'
    'M24.1 4H25.5V9H24.1Z M26.5 4H27.9V9H26.5Z"/>'
)


def sails(state: str, ink: str) -> str:
    if state == "stopped":  # furled: outlines only
        return (
            f'<g fill="none" stroke="{ink}" stroke-width="1.4" stroke-linejoin="round">'
            f'<path d="{MAIN_SAIL}"/><path d="{JIB}"/></g>'
        )
    opacity = ' fill-opacity="0.55"' if state.startswith("starting") else ""
    return f'<g fill="{ink}"{opacity}><path d="{MAIN_SAIL}"/><path d="{JIB}"/></g>'


def badge(state: str, variant: str) -> str:
    if state == "stopped":
        return ""
    colour = BADGE[variant]["starting" if state.startswith("starting") else state]
    if state == "starting":
        return BADGE_DOT.format(c=colour)
    if state == "starting-alt":
        return BADGE_RING.format(c=colour)
    if state == "error":
        return BADGE_ERROR.format(c=colour)
    if state == "paused":
        return BADGE_PAUSED.format(c=colour)
    return BADGE_DOT.format(c=colour)


def tray_icon(state: str, variant: str) -> str:
    ink = INK[variant]
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">\n'
        f"  <title>Pinnace: {state.replace('-alt', '')}</title>\n"
        f'  <g fill="{ink}">{MAST}<path d="{HULL}"/></g>\n'
        f"  {sails(state, ink)}\n"
        f"  {badge(state, variant)}\n"
        "</svg>\n"
    )


def app_icon() -> str:
    """The full-colour application icon (desktop entry, windows)."""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 32 32">\n'
        "  <title>Pinnace</title>\n"
        '  <defs><linearGradient id="sea" x1="0" y1="0" x2="0" y2="1">'
        '<stop offset="0" stop-color="#3b82c4"/><stop offset="1" stop-color="#1d4f7a"/>'
        "</linearGradient></defs>\n"
        '  <rect x="0.5" y="0.5" width="31" height="31" rx="7" fill="url(#sea)"/>\n'
        '  <path d="M2 26.5C5 25 7 28 10 26.5S15 25 18 26.5 23 28 26 26.5 29.5 25.5 30 26V31H2Z" '
        'fill="#ffffff" fill-opacity="0.18"/>\n'
        f'  <g transform="translate(0 -1)"><g fill="#f4f1e8"><path d="{MAIN_SAIL}"/><path d="{JIB}"/></g>\n'
        f'  <g fill="#b8552e">{MAST}<path d="{HULL}"/></g></g>\n'
        "</svg>\n"
    )


def main() -> None:
    for variant in INK:
        for state in STATES:
            (HERE / f"pinnace-{state}-{variant}.svg").write_text(tray_icon(state, variant), encoding="utf-8")
    (HERE / "pinnace.svg").write_text(app_icon(), encoding="utf-8")


if __name__ == "__main__":
    main()
