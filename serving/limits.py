"""Sizes and bounds shared by the request schemas and the database tables.

One constant per bound, so a request can never carry a value its column cannot hold: the API rejects
what the store would truncate or refuse (PostgreSQL) instead of answering 500.
"""

from __future__ import annotations

NAME_LENGTH = 200  # deal_id, pipeline, owner, team, stage and attribute names
ACCOUNT_LENGTH = 500
CURRENCY_LENGTH = 10
EVENT_ID_LENGTH = 200
FIELD_VALUE_LENGTH = NAME_LENGTH  # a field change's value: an owner becomes the deal's current owner
ATTRIBUTE_VALUE_LENGTH = 1000  # a custom attribute's text value (kept in a JSON column)

MAX_ATTRIBUTES_PER_DEAL = 100
# Distinct custom-attribute names one pipeline may collect over all its deals (each becomes a column of
# every read of the pipeline); settings.max_attribute_names_per_pipeline may set another bound.
DEFAULT_MAX_ATTRIBUTE_NAMES = 200
