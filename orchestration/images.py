"""The digests of the step images in the local Docker engine, for the model card's provenance.

A step never learns its own image's digest, so the pipeline records them when it is compiled:
the registry digest (`RepoDigests`: what a cluster pulls, once the image was pushed) when the
engine knows one for the image's repository, else the local image id (the digest of its
configuration: what `docker run` started, on this machine).
"""

from __future__ import annotations

from components.common import build_facts


class ImageError(Exception):
    """An image that is not in the local engine (build it first)."""


def digest_of(image) -> str:
    """`sha256:...` of a docker SDK image: its registry digest for its own repository, else
    its id."""
    repositories = {tag.rsplit(":", 1)[0] for tag in image.tags}
    for repo_digest in image.attrs.get("RepoDigests") or []:
        repository, _, digest = repo_digest.partition("@")
        if repository in repositories and digest:
            return digest
    return image.id


def digests(registry: str, tag: str | None, steps=None) -> dict[str, str]:
    """{step: sha256 digest} of the images `build_facts` names for `registry` and `tag`."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env()
    except DockerException as exc:
        raise ImageError(f"image digests: no Docker engine reachable ({exc})") from exc
    found = {}
    for step in steps or build_facts.training_steps():
        name = build_facts.image_name(step, registry, tag)
        try:
            found[step] = digest_of(client.images.get(name))
        except ImageNotFound:
            raise ImageError(f"image digests: {name} is not in the local Docker engine; build "
                             "(and push) the images first, or compile without --image-digests"
                             ) from None
    return found
