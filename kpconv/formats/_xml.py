"""XML helpers shared by the XML readers (CVAT, dlib): the root tag, cheaply, and a located parse."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from ..errors import AnnotationError, Location


def root_tag(path: Path) -> Optional[str]:
    """The tag of the document element, reading only up to it (None: not an XML file)."""
    try:
        with open(path, "rb") as f:
            if not f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
                return None
            f.seek(0)
            for _event, elem in ET.iterparse(f, events=("start",)):
                return elem.tag
    except (OSError, ET.ParseError, LookupError, ValueError):   # LookupError: an unknown encoding
        return None
    return None


def parse(path: Path) -> ET.Element:
    """The document element; malformed XML stops the ingest with its line and column."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"invalid XML: {e}", Location(str(path), e.position[0])) from None
    except (LookupError, ValueError) as e:      # an encoding Python does not know, a bad declaration
        raise AnnotationError(f"invalid XML: {e}", Location(str(path), 1)) from None
    except OSError as e:
        raise AnnotationError(f"cannot read file: {e.strerror}", Location(str(path))) from None


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
