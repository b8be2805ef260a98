"""XML helpers shared by the XML readers (CVAT, dlib): the root tag, cheaply, and a located parse.

Every XML parse goes through :mod:`defusedxml` (entity declarations, external entities and DTD
fetches refused: the "billion laughs" and XXE), not a reliance on the Python build's expat version."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import defusedxml
import defusedxml.ElementTree as SafeET

from ...errors import AnnotationError, Location


def root_tag(path: Path) -> Optional[str]:
    """The tag of the document element, reading only up to it (None: not an XML file)."""
    try:
        with open(path, "rb") as f:
            if not f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
                return None
            f.seek(0)
            for _event, elem in SafeET.iterparse(f, events=("start",)):
                return elem.tag
    except (OSError, ET.ParseError, LookupError, ValueError):   # LookupError: an unknown encoding
        return None                                             # (defusedxml's refusals are ValueErrors)
    return None


def _declaration_line(path: Path, what: bytes) -> Optional[int]:
    """The line of the first ``what`` (``<!ENTITY``, ...) in the file, for a refusal's location."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    at = data.find(what)
    return data.count(b"\n", 0, at) + 1 if at >= 0 else None


def parse(path: Path) -> ET.Element:
    """The document element; malformed XML stops the ingest with its line and column."""
    try:
        return SafeET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"invalid XML: {e}", Location(str(path), e.position[0])) from None
    except defusedxml.EntitiesForbidden as e:
        raise AnnotationError(f"invalid XML: entity declaration <!ENTITY {e.name} ...> refused (entities can expand "
                              "without bound; annotation files need none)",
                              Location(str(path), _declaration_line(path, b"<!ENTITY"))) from None
    except defusedxml.DefusedXmlException as e:  # an external reference, a DTD
        raise AnnotationError(f"invalid XML: {e} (refused: annotation files need no external references)",
                              Location(str(path), _declaration_line(path, b"<!DOCTYPE"))) from None
    except (LookupError, ValueError) as e:      # an encoding Python does not know, a bad declaration
        raise AnnotationError(f"invalid XML: {e}", Location(str(path), 1)) from None
    except OSError as e:
        raise AnnotationError(f"cannot read file: {e.strerror}", Location(str(path))) from None


def fromstring(text: str) -> ET.Element:
    """A fragment held in a document (CVAT's skeleton SVG), parsed as safely; raises ET.ParseError or
    a ValueError (defusedxml's refusals)."""
    return SafeET.fromstring(text)


def number(elem: ET.Element, attr: str) -> Optional[float]:
    """A float attribute, or None when it is missing or not a finite number."""
    text = elem.get(attr)
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if v == v and abs(v) != float("inf") else None
