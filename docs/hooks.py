"""MkDocs hooks: the CLI reference page is made from the parser at build time (never hand-copied)."""

MARKER = "<!-- generated: fusionsearch --help -->"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        from fusionsearch.cli import reference

        return markdown.replace(MARKER, reference())
    return markdown
