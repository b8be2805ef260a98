"""The one YAML loader of the readers (YOLO ``data.yaml``, DeepLabCut ``config.yaml``): PyYAML's safe loader
without aliases (the "billion laughs"), at most ``MAX_DEPTH`` levels, UTF-8 only, at most :data:`MAX_BYTES`;
every failure a located :class:`AnnotationError`."""
from __future__ import annotations

from pathlib import Path

from ...errors import AnnotationError, Location
from ..jsonparse import MAX_DEPTH

MAX_BYTES = 4 << 20


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted",
                                                  self.peek_event().start_mark)
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                      self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return Loader


def load_yaml(path: Path):
    """The document in ``path`` (any YAML value: callers check its shape)."""
    import yaml

    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise AnnotationError(f"cannot read file: {e.strerror}", Location(name)) from None
    if len(data) > MAX_BYTES:
        raise AnnotationError(f"larger than {MAX_BYTES >> 20} MiB: not a dataset configuration file", Location(name))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise AnnotationError(f"not a UTF-8 text file ({e.reason} at byte {e.start})", Location(name, line)) from None
    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise AnnotationError(f"invalid YAML: {getattr(e, 'problem', None) or e}",
                              Location(name, mark.line + 1 if mark else None)) from None
    except RecursionError:      # (the depth limit above comes first; a last guard, located)
        raise AnnotationError(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", Location(name)) from None
