"""The OpenAPI schema documents every /api/v1/ operation with examples: a request example where it
takes a body, an example of each answer it lists, errors in the one error shape with codes the
code really emits, and every example valid against its own schema."""

import ast
import re
from pathlib import Path

import jsonschema
import pytest
from django.test import Client

import rewards
from rewards.models import Redemption

JSON = "application/json"
# The examples live here; the codes they name must be found in the rest of rewards/.
EXAMPLES_MODULE = "api_examples.py"


@pytest.fixture(scope="module")
def schema():
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def operations(schema) -> list[tuple[str, dict]]:
    found = [
        (f"{method.upper()} {path}", operation)
        for path, methods in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in methods.items()
    ]
    assert len(found) >= 12, found  # purchases, batch, refunds, customer, ledger, enroll, ...
    return found


def examples_of(part: dict) -> dict:
    return part.get("content", {}).get(JSON, {}).get("examples", {})


def emitted_codes() -> tuple[set[str], set[str]]:
    """The string literals of rewards/*.py (examples module excepted) and the prefixes of its
    f-strings: a code the API answers with is one of the literals, or a prefix completed at run
    time (f"voucher_{redemption.state}")."""
    literals, prefixes = set(), set()
    for source in Path(rewards.__file__).parent.glob("*.py"):
        if source.name == EXAMPLES_MODULE:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                prefixes.add(node.values[0].value)
    return literals, prefixes


def code_is_emitted(code: str, literals: set[str], prefixes: set[str]) -> bool:
    if code in literals:
        return True
    return any(
        code.startswith(prefix) and code[len(prefix) :] in Redemption.State.values
        for prefix in prefixes
        if prefix.endswith("_")
    )


def test_every_operation_has_a_request_example_and_an_example_of_each_answer(schema):
    missing = []
    for name, operation in operations(schema):
        if "requestBody" in operation and not examples_of(operation["requestBody"]):
            missing.append(f"{name}: request body")
        responses = operation["responses"]
        assert any(status.startswith("2") for status in responses), name
        for status, response in responses.items():
            if not examples_of(response):
                missing.append(f"{name}: {status}")
    assert not missing, missing


def test_every_operation_says_what_it_does_in_its_own_words(schema):
    """A summary and a description of its own: a view without one would show its base class's
    docstring (drf-spectacular reads docstrings through the class hierarchy)."""
    from rewards.api import LoyaltyAPIView

    base = LoyaltyAPIView.__doc__.strip()
    for name, operation in operations(schema):
        assert operation.get("summary"), name
        assert operation.get("description") and base not in operation["description"], name


def test_error_examples_have_the_error_shape_and_codes_the_code_emits(schema):
    literals, prefixes = emitted_codes()
    problems, codes = [], set()
    for name, operation in operations(schema):
        for status, response in operation["responses"].items():
            if status < "400":
                continue
            for key, example in examples_of(response).items():
                where = f"{name} {status} {key}"
                body = example["value"]
                if set(body) != {"error"} or set(body["error"]) != {"code", "message", "fields"}:
                    problems.append(f"{where}: not the error shape: {body}")
                    continue
                error = body["error"]
                if not (isinstance(error["message"], str) and error["message"]):
                    problems.append(f"{where}: no message")
                messages = error["fields"].values()
                if not all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in messages):
                    problems.append(f"{where}: fields are not lists of messages")
                if not code_is_emitted(error["code"], literals, prefixes):
                    problems.append(f"{where}: the code {error['code']!r} is not one rewards/ emits")
                codes.add(error["code"])
        if "400" in operation["responses"]:
            invalid = [
                e["value"]["error"]
                for e in examples_of(operation["responses"]["400"]).values()
                if e["value"]["error"]["code"] == "invalid"
            ]
            if not any(error["fields"] for error in invalid):
                problems.append(f"{name}: no 400 example of a validation error with its fields")
    assert not problems, problems
    # The check saw the refusals it is meant to see (and did not pass on an empty schema).
    assert {
        "invalid",
        "malformed_request",
        "not_authenticated",
        "not_found",
        "idempotency_conflict",
        "insufficient_points",
        "voucher_used",
        "rate_limited",
        "service_unavailable",
    } <= codes


def test_an_invented_code_is_not_taken_for_an_emitted_one():
    literals, prefixes = emitted_codes()
    assert code_is_emitted("voucher_expired", literals, prefixes)
    assert code_is_emitted("insufficient_points", literals, prefixes)
    assert not code_is_emitted("voucher_lost", literals, prefixes)
    assert not code_is_emitted("points_too_low", literals, prefixes)


def json_schema(node):
    """OpenAPI 3.0's schema dialect as JSON Schema: `nullable: true` becomes "or null"."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def test_every_example_is_valid_against_its_schema(schema):
    components = json_schema(schema["components"])
    problems, checked = [], 0
    for name, operation in operations(schema):
        parts = [("request", operation.get("requestBody", {}))]
        parts += list(operation["responses"].items())
        for label, part in parts:
            content = part.get("content", {}).get(JSON)
            if not content:
                continue
            validator = jsonschema.Draft202012Validator(
                {"allOf": [json_schema(content["schema"])], "components": components},
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
            for key, example in content.get("examples", {}).items():
                checked += 1
                for error in validator.iter_errors(example["value"]):
                    problems.append(f"{name} {label} {key}: {error.json_path}: {error.message}")
    assert not problems, problems
    assert checked > 50


def test_the_examples_tell_one_story(schema):
    """The same member, purchase and voucher wherever they appear."""
    text = str(schema["paths"])
    assert "C000042" in text and "POS1-2026-000123" in text and "FDBH-D59L-T3JM" in text
    refs = set(re.findall(r"'customer': '(C\d+)'", text)) | set(re.findall(r"'external_ref': '(C\d+)'", text))
    assert refs <= {"C000042", "C000117"}, refs  # the member, and the shopper who is not one
