"""The audit log of staff actions: `audit_record` for explicit calls (adjust points, cancel a
voucher, launch a campaign, create a token), `AuditedAdminMixin` for what a ModelAdmin saves
and deletes (a snapshot of the row before and after, with its editable inlines and
many-to-many fields, such as a user's groups or a group's permissions)."""

from __future__ import annotations

import json

from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models.fields.files import FieldFile

from .models import AuditEntry

Action = AuditEntry.Action

# Never copied into the log: password hashes, token hashes, authenticator keys.
SECRET_FIELDS = {"password", "token_hash", "key"}
# Roles: what makes a login staff, and what it may do.
ROLE_FIELDS = {"is_staff", "is_superuser", "is_active", "groups", "user_permissions", "permissions"}
VALUE_MAX = 80
INLINE_ROWS_MAX = 200


def _m2m_value(related) -> str | int:
    meta = related._meta
    if meta.label == "auth.Permission":
        return f"{related.content_type.app_label}.{related.codename}"
    if meta.label == "auth.Group":
        return related.name
    return related.pk


def snapshot(obj: models.Model | None) -> dict | None:
    """The row as plain JSON: fields by name (foreign keys as ids), many-to-many as sorted
    lists (permissions as 'app.codename', groups by name), secrets left out."""
    if obj is None:
        return None
    data = {}
    opts = obj._meta
    for field in opts.concrete_fields:
        if field.name in SECRET_FIELDS:
            continue
        value = getattr(obj, field.attname)
        if isinstance(value, FieldFile):
            value = value.name or None
        data[field.name] = value
    if obj.pk is not None:
        for field in opts.many_to_many:
            manager = getattr(obj, field.name)
            if field.related_model._meta.label == "auth.Permission":
                manager = manager.select_related("content_type")
            data[field.name] = sorted((_m2m_value(r) for r in manager.all()), key=str)
    # Through JSON once, so that a snapshot compares equal to what the database gives back.
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def changed_fields(before: dict | None, after: dict | None) -> list[str]:
    before, after = before or {}, after or {}
    return [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def _short(value) -> str:
    text = "–" if value in (None, "", [], {}) else str(value)
    return text if len(text) <= VALUE_MAX else text[: VALUE_MAX - 1] + "…"


def _label(model, name: str) -> str:
    try:
        return str(model._meta.get_field(name).verbose_name)
    except Exception:  # an inline's key, or a field since removed
        return name


def summary_make(action: str, obj_label: str, model, before: dict | None, after: dict | None) -> str:
    """One readable line, in the staff member's language: what happened to what, and the
    fields that changed with their old and new values."""
    head = f"{AuditEntry.Action(action).label}: {obj_label}"
    if before is None or after is None:
        return head
    changes = [
        f"{_label(model, name)}: {_short(before.get(name))} → {_short(after.get(name))}"
        for name in changed_fields(before, after)
    ]
    return f"{head} ({'; '.join(changes)})" if changes else head


def audit_record(
    *,
    user,
    action: str,
    obj: models.Model | None = None,
    model: type[models.Model] | None = None,
    object_id=None,
    object_repr: str = "",
    before: dict | None = None,
    after: dict | None = None,
    summary: str = "",
) -> AuditEntry:
    """Append one entry (never changed afterwards: the database refuses). Call it inside the
    transaction of the change, so the entry and the change are kept or lost together."""
    model = model or (type(obj) if obj is not None else None)
    if obj is not None:
        object_id = obj.pk if object_id is None else object_id
        object_repr = object_repr or str(obj)
    object_repr = object_repr[:200]
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False) if model else None
    if not summary:
        summary = summary_make(action, object_repr, model, before, after) if model else str(action)
    return AuditEntry.objects.create(
        user=user if getattr(user, "pk", None) else None,
        username=user.get_username() if getattr(user, "pk", None) else "",
        action=action,
        content_type=content_type,
        object_id="" if object_id is None else str(object_id),
        object_repr=object_repr,
        summary=summary,
        before=before,
        after=after,
    )


class AuditedAdminMixin:
    """Writes an audit entry for every add, change and delete this ModelAdmin makes.

    save_model snapshots the row as the database has it (the form has already changed the
    instance in memory), save_related snapshots it again once its many-to-many fields and
    inlines are saved, and writes the entry: both run inside the admin's transaction.
    Inlines listed in `audit_inlines` (their models) are part of the snapshot.
    """

    audit_inlines: tuple[type[models.Model], ...] = ()

    def audit_snapshot(self, request, obj) -> dict | None:
        data = snapshot(obj)
        if data is None or obj.pk is None:
            return data
        for inline in self.get_inline_instances(request, obj):
            if inline.model not in self.audit_inlines:
                continue
            from django.forms.models import _get_foreign_key

            fk = _get_foreign_key(type(obj), inline.model, fk_name=inline.fk_name)
            rows = inline.model._default_manager.filter(**{fk.name: obj}).order_by("pk")[:INLINE_ROWS_MAX]
            data[inline.model._meta.model_name] = [snapshot(row) for row in rows]
        return data

    def audit_action(self, request, obj, before: dict | None, after: dict | None) -> str:
        """The entry's action for an add or change; admins override it (a revoked token, roles)."""
        if before is None:
            return Action.CREATE
        return Action.CHANGE

    def save_model(self, request, obj, form, change):
        before = None
        if change and obj.pk is not None:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = self.audit_snapshot(request, stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        # Kept on the instance until save_related (one form, one instance).
        obj._audit_before = before

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        obj = form.instance
        before = getattr(obj, "_audit_before", None)
        # As stored (Decimal places, defaults filled in by the database), like `before`.
        stored = type(obj)._default_manager.filter(pk=obj.pk).first()
        after = self.audit_snapshot(request, stored if stored is not None else obj)
        if before is not None and before == after:
            return  # saved without a change
        self.audit_write(request, obj, before, after)

    def audit_write(self, request, obj, before, after) -> AuditEntry:
        return audit_record(
            user=request.user,
            action=self.audit_action(request, obj, before, after),
            obj=obj,
            before=before,
            after=after,
        )

    def delete_model(self, request, obj):
        before = self.audit_snapshot(request, obj)
        object_id, label = obj.pk, str(obj)
        super().delete_model(request, obj)
        audit_record(
            user=request.user,
            action=Action.DELETE,
            model=type(obj),
            object_id=object_id,
            object_repr=label,
            before=before,
        )

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            gone = [(type(obj), obj.pk, str(obj), self.audit_snapshot(request, obj)) for obj in queryset]
            super().delete_queryset(request, queryset)
            for model, object_id, label, before in gone:
                audit_record(
                    user=request.user,
                    action=Action.DELETE,
                    model=model,
                    object_id=object_id,
                    object_repr=label,
                    before=before,
                )


def roles_changed(before: dict | None, after: dict | None) -> bool:
    return any(name in ROLE_FIELDS for name in changed_fields(before, after))
