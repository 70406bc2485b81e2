"""The template files: cloudinit/, units/, manifests/ and configs/ at the top of the repository.

A wheel carries them under vent_bake/templates/ (see pyproject.toml); a source checkout reads
them where they are. Values are quoted by the templates themselves (`tojson` yields a valid
YAML double-quoted scalar); Python only passes values.
"""

from functools import cache
from pathlib import Path

import jinja2
from jinja2 import meta

_PACKAGE = Path(__file__).parent


def root() -> Path:
    shipped = _PACKAGE / "templates"
    return shipped if shipped.is_dir() else _PACKAGE.parent


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(template: str, **values) -> str:
    """Fill a template; a shell script (*.sh) is shipped as it is, since it reads its values
    from the node's /etc/vent/node.env at run time."""
    if template.endswith(".sh"):
        return _text(template)
    return _env().get_template(template).render(**values)


@cache
def without_comments(script: str) -> str:
    """A shell script without its comment lines and blank lines, for the userdata's budget:
    the shebang and shellcheck directives stay; the commented source is the template."""
    keep = [
        line for i, line in enumerate(script.splitlines(keepends=True))
        if line.strip() and (i == 0 or not line.lstrip().startswith("#") or line.lstrip().startswith("# shellcheck"))
    ]
    return "".join(keep)


@cache
def _text(name: str) -> str:
    return (root() / name).read_text()


@cache
def variables(template: str) -> frozenset[str]:
    """The names a template reads: what its output can depend on."""
    if template.endswith(".sh"):
        return frozenset()
    env = _env()
    source = env.loader.get_source(env, template)[0]
    return frozenset(meta.find_undeclared_variables(env.parse(source)))
