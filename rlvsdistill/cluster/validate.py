"""Schema checks before anything is sent: core objects against the Kubernetes OpenAPI schemas (strict: unknown
fields are errors), PyTorchJobs against the PyTorchJob CRD's openAPIV3Schema."""

from __future__ import annotations

import os

import jsonschema
import kubernetes_validate
import yaml

from ..io import UserError

CRD_ENV = "RLVSDISTILL_PYTORCHJOB_CRD"


def crd_schema_from_file(path: str | os.PathLike) -> dict:
    """The openAPIV3Schema of the served version of a CRD YAML file."""
    try:
        with open(path) as f:
            crd = yaml.safe_load(f)
        [version] = [v for v in crd["spec"]["versions"] if v.get("served")]
        return version["schema"]["openAPIV3Schema"]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a CRD with one served version and a schema ({exc})") from None


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


def validate_objects(objects: list[dict], kubernetes_version: str, pytorchjob_schema: dict | None) -> list[str]:
    """Problems found, one line each naming the object and the field; PyTorchJobs need ``pytorchjob_schema``."""
    problems = []
    for obj in objects:
        ident = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") == "PyTorchJob":
            if pytorchjob_schema is None:
                problems.append(f"{ident}: no PyTorchJob CRD schema to check against (--crd FILE or ${CRD_ENV})")
                continue
            validator = jsonschema.Draft7Validator(pytorchjob_schema)
            problems += [f"{ident}: {_where(e)}: {e.message}" for e in validator.iter_errors(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{ident}: {_where(exc)}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{ident}: no schema for {obj.get('apiVersion')} {obj.get('kind')} "
                            f"in Kubernetes {kubernetes_version}")
    return problems
