"""Validation harnesses; ``write_md_json`` is where every validation command writes its report pair."""


def write_md_json(out_dir, stem: str, markdown: str, data) -> tuple:
    """Write ``<stem>.md`` (``markdown`` as given) and ``<stem>.json`` (``data``, indented) under ``out_dir``.

    Creates ``out_dir``; returns the two paths (markdown, JSON).
    """
    from perfmodel import jsonout
    import pathlib

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(jsonout.dumps(data, indent=2) + "\n")
    return md, js
