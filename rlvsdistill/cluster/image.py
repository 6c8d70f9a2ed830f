"""The image every container of a run pulls: ``REGISTRY/PATH[:TAG][@sha256:DIGEST]``, checked before rendering.

A reference without a registry would be pulled from Docker Hub, where this project's image is not published, so
it is refused unless the user says the image is local to the nodes (kind/minikube ``load``; nothing is pulled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..io import UserError

# The grammar of github.com/distribution/reference (domain, path components, tag, sha256 digest).
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")  # at most 63: the tag is also a label value
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
PULL_ALWAYS, PULL_IF_NOT_PRESENT, PULL_NEVER = "Always", "IfNotPresent", "Never"


@dataclass(frozen=True)
class ImageRef:
    """A checked image reference; ``str()`` is exactly what goes into every container."""

    repository: str  # with its registry, e.g. registry.example.org/team/rlvsdistill
    tag: str | None = None
    digest: str | None = None  # sha256:<64 hex>
    local: bool = False  # present on the nodes already; never pulled

    def __str__(self) -> str:
        return self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def pull_policy(self) -> str:
        """A tag can be moved, so it is pulled every time; a digest names fixed bytes; a local image is never pulled."""
        if self.local:
            return PULL_NEVER
        return PULL_IF_NOT_PRESENT if self.digest else PULL_ALWAYS


def has_registry(repository: str) -> bool:
    """Whether the first path component is a registry host (contains '.' or ':', or is localhost), as Docker reads it."""
    first, sep, _ = repository.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _repository_problems(repository: str, what: str) -> list[str]:
    if not repository:
        return [f"{what}: no repository"]
    if any(c.isspace() for c in repository):
        return [f"{what}: {repository!r} contains a space"]
    if "://" in repository:
        return [f"{what}: {repository!r} has a URL scheme; give the registry host and path only"]
    parts = repository.split("/")
    start = 1 if has_registry(repository) else 0
    if start and not DOMAIN.fullmatch(parts[0]):
        return [f"{what}: {parts[0]!r} is not a valid registry host"]
    bad = [p for p in parts[start:] if not PATH_COMPONENT.fullmatch(p)]
    if bad:
        return [f"{what}: {repository!r}: path component {bad[0]!r} is not valid (lower case letters, digits, "
                "and '.', '_', '-' between them)"]
    return []


def parse_image(text: str, local: bool = False, what: str = "--image") -> ImageRef:
    """Check ``REPO[:TAG][@sha256:DIGEST]``; UserError names every problem (``what`` is the option given)."""
    problems = []
    rest, _, digest = text.partition("@")
    repository, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:  # a ':' after the last '/' starts the tag (before it: a registry port)
        repository, _, tag = rest.rpartition(":")
    problems += _repository_problems(repository, what)
    if tag is not None and not TAG.fullmatch(tag):
        problems.append(f"{what}: tag {tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; at most 63)")
    if "@" in text and not DIGEST.fullmatch(digest):
        problems.append(f"{what}: digest {digest!r} is not sha256: followed by 64 lower-case hex digits")
    if not problems and tag is None and not digest:
        problems.append(f"{what}: {text!r} names no tag or digest; give REPO:TAG or REPO@sha256:DIGEST "
                        "(an implicit :latest is not reproducible)")
    if not problems and not local and not has_registry(repository):
        problems.append(f"{what}: {text!r} names no registry, so every node would pull docker.io/{repository}; "
                        "set REGISTRY=host/path (rlvsdistill submit --registry), or say the image is already on "
                        "the nodes with LOCAL_IMAGE=1 (--local-image)")
    if problems:
        raise UserError("; ".join(problems))
    return ImageRef(repository, tag, digest or None, local)


def image_from_options(repository: str, image: str | None = None, image_tag: str | None = None,
                       registry: str | None = None, local: bool = False) -> ImageRef:
    """The run's image from ``--image REF``, or from ``--registry`` + ``repository`` (the cluster settings'
    ``image_repository``) + ``--image-tag``; giving both ways is an error, not a silent choice."""
    if image is not None:
        given = [flag for flag, value in (("--image-tag (IMAGE_TAG)", image_tag), ("--registry (REGISTRY)", registry))
                 if value]
        if given:
            raise UserError(f"--image {image!r} is a whole reference; it cannot be combined with {' or '.join(given)}")
        return parse_image(image, local)
    if not image_tag:
        raise UserError("--image-tag: required, or --image REPO[:TAG|@sha256:DIGEST] (every run names its image)")
    if not TAG.fullmatch(image_tag):
        raise UserError(f"--image-tag: {image_tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; "
                        "at most 63)")
    if registry is not None:
        problems = _repository_problems(registry.rstrip("/"), "--registry (REGISTRY)")
        if not problems and not has_registry(registry):
            problems = [f"--registry (REGISTRY): {registry!r} does not start with a registry host "
                        "(e.g. registry.example.org/team, localhost:5000)"]
        if not problems and has_registry(repository):
            problems = [f"--registry (REGISTRY): the cluster settings' image_repository {repository!r} already names "
                        "a registry"]
        if problems:
            raise UserError("; ".join(problems))
        repository = f"{registry.rstrip('/')}/{repository}"
    return parse_image(f"{repository}:{image_tag}", local, what="image (--registry + image_repository + --image-tag)")
