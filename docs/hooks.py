"""mkdocs hook: the reference pages (reference/*.md) are generated from the code at build time
(vaecli.reference), so the site's command, config and JSON references cannot drift from it."""

from mkdocs.structure.files import File


def on_files(files, config):
    from vaecli import reference

    for page, function in reference.PAGES.items():
        files.append(File.generated(config, page, content=getattr(reference, function)()))
    return files
