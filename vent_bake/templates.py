"""The template files: cloudinit/, units/, manifests/ and configs/ at the top of the repository.

A wheel carries them under vent_bake/templates/ (see pyproject.toml); a source checkout reads
them where they are. They are read once per process, all together (`sources`, which the
artifacts' MANIFEST fingerprints too), and each is compiled once: a render itself reads no
file. Values are quoted by the templates themselves (`tojson` yields a valid YAML
double-quoted scalar, `sh` a shell word); Python only passes values.

Compiling every template costs a small render about 30 ms of its 0.22 s, so the compiled code
is kept, as Python keeps .pyc files, in the user's cache directory (`bytecode_cache`): per
jinja2 version and version of this module (the Environment's options shape the compiled code),
and by each template's text. jinja2 itself is imported only when a template is filled: a
render with nothing to do never loads it.
"""

import hashlib
import os
import shlex
import stat
from functools import cache
from pathlib import Path

KINDS = ("cloudinit", "configs", "manifests", "units")

_PACKAGE = Path(__file__).parent


def root() -> Path:
    shipped = _PACKAGE / "templates"
    return shipped if shipped.is_dir() else _PACKAGE.parent


@cache
def sources() -> dict[str, str]:
    """Every template's text, by its name ("units/kubelet.service"), read once."""
    base = root()
    return {path.relative_to(base).as_posix(): path.read_text()
            for kind in KINDS for path in sorted((base / kind).rglob("*")) if path.is_file()}


def cache_directory() -> Path:
    """Where compiled templates are kept: per jinja2 version and per version of this module."""
    import jinja2

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    this = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return Path(base, "vent-bake", f"jinja2-{jinja2.__version__}-{this}")


def bytecode_cache():
    """jinja2's cache of compiled templates in cache_directory(), or None unless that directory
    and the one holding it are this user's alone: compiled code is run as it is found, so a
    directory others could write to, or swap, is never read. A cache that cannot be written is
    only slower."""
    from jinja2 import FileSystemBytecodeCache

    directory = cache_directory()
    try:
        for d, others_may in ((directory.parent, 0o055), (directory, 0)):  # may read and enter
            if not d.exists():
                d.parent.mkdir(parents=True, exist_ok=True)
                d.mkdir(mode=0o700, exist_ok=True)
            st = d.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077 & ~others_may:
                return None
    except OSError:
        return None

    class Cache(FileSystemBytecodeCache):
        def dump_bytecode(self, bucket):
            try:
                super().dump_bytecode(bucket)
            except OSError:
                pass

    return Cache(str(directory))


@cache
def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources()),
        bytecode_cache=bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    return env


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


def _text(name: str) -> str:
    return sources()[name]
