"""Schemathesis against the live OpenAPI document of the app, every operation, every role and no key.

For each operation, hypothesis draws cases from the schema (valid and invalid inputs) and each case is
sent with an admin, manager and integration key and with none. Every answer must be no 5xx and must
conform to the documented schema, errors included (status code, content type, body); without a key
every operation but the public ones answers 401. A bounded run is part of `make test`; `make fuzz`
sets DEALRISK_FUZZ_EXAMPLES higher.
"""

from __future__ import annotations

import os
import shutil
import traceback
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.app import create_app  # noqa: E402
from tests.serving.conftest import World, make_settings  # noqa: E402

EXAMPLES = int(os.environ.get("DEALRISK_FUZZ_EXAMPLES", "6"))
ROLES = ("admin", "manager", "integration", None)
# Public on purpose (SECURITY.md): liveness and readiness for orchestrators, the page shell (its data
# calls need a key). /docs and /openapi.json are not operations of the schema.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_schema(world: World, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The schema of an app on a private copy of the store (fuzzed writes land there)."""
    copy = Path(tmp_path_factory.mktemp("fuzz")) / "store.db"
    shutil.copyfile(world.home / "dealrisk.db", copy)
    app = create_app(make_settings(world, database_url=f"sqlite:///{copy}"))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_covers_every_route(world: World, fuzz_schema: Any) -> None:
    labels = {(op.method.upper(), op.path) for op in _operations(fuzz_schema)}
    assert ("POST", "/v1/score") in labels and ("GET", "/v1/pipelines/{pipeline}/at-risk") in labels
    assert len(labels) >= 13


def _fuzz(world: World, operation: Any, mode: GenerationMode, tried: dict[str, int]) -> Any:
    label = f"{operation.method.upper()} {operation.path}"
    public = (operation.method.upper(), operation.path) in PUBLIC

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tried[label] = tried.get(label, 0) + 1
        for role in ROLES:
            headers = {"Authorization": f"Bearer {world.keys[role]}"} if role else {}
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)
            if role is None and not public:
                # Without a key nothing is served: 401, or a body rejected before any route ran
                # (unparsable JSON, over the size limit), which reveals nothing either.
                unparsed = response.status_code in (400, 413) or (
                    response.status_code == 422 and '"json_invalid"' in response.text
                )
                assert response.status_code == 401 or unparsed, (
                    label,
                    response.status_code,
                    response.text[:300],
                )

    return run


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_every_operation_with_every_role(world: World, fuzz_schema: Any, mode: GenerationMode) -> None:
    tried: dict[str, int] = {}
    failures: list[str] = []
    for operation in _operations(fuzz_schema):
        try:
            _fuzz(world, operation, mode, tried)()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation without inputs has no invalid ones
            tried[f"{operation.method.upper()} {operation.path}"] = 0
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, report together
            trace = traceback.format_exc()[-2500:]
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}\n{trace}")
    assert not failures, "\n\n".join(failures)
    fuzzed = sum(n >= 1 for n in tried.values())
    # Every operation gets valid cases; invalid ones exist only for operations with inputs (8 of 13).
    assert len(tried) >= 13 and fuzzed >= (len(tried) if mode is GenerationMode.POSITIVE else 7), tried
    print(f"{mode.value}: {sum(tried.values())} cases over {len(tried)} operations x {len(ROLES)} keys")
