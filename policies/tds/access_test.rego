package tds.access_test

import data.tds.access
import rego.v1

base := {
	"action": "catalog.read",
	"subject": {"id": "ent-a", "role": "enterprise", "attrs": {"org": "A"}, "grants": []},
	"resource": {
		"id": "p", "owner": "gov", "grade": "general", "tags": [], "fields": [],
		"registration_code": "", "personal": false, "access": {},
	},
	"offer": {}, "contract": {},
	"context": {"now_ns": 1800000000000000000},
}

with_access(rules) := object.union(base, {"resource": object.union(base.resource, {"access": rules})})

test_allow_general_product if {
	doc := object.union(base, {})
	result := access.decision with input as doc
	result.allow
}

test_allow_owner_despite_rules if {
	doc := object.union(with_access({"roles": ["auditor"]}), {"subject": {"id": "gov", "role": "government", "attrs": {}, "grants": []}})
	result := access.decision with input as doc
	result.allow
}

test_deny_core if {
	doc := object.union(base, {"resource": object.union(base.resource, {"grade": "core"})})
	result := access.decision with input as doc
	"core_data" in result.deny
}

test_deny_role if {
	doc := with_access({"roles": ["government"]})
	result := access.decision with input as doc
	"role_not_allowed" in result.deny
}

test_allow_role if {
	doc := with_access({"roles": ["enterprise"]})
	result := access.decision with input as doc
	result.allow
}

test_deny_allow_list if {
	doc := with_access({"allow_list": ["ent-b"]})
	result := access.decision with input as doc
	"not_on_allow_list" in result.deny
}

test_allow_allow_list if {
	doc := with_access({"allow_list": ["ent-a"]})
	result := access.decision with input as doc
	result.allow
}

test_deny_attribute if {
	doc := with_access({"attrs": {"org": "B"}})
	result := access.decision with input as doc
	"attribute_mismatch" in result.deny
}

test_allow_attribute if {
	doc := with_access({"attrs": {"org": "A"}})
	result := access.decision with input as doc
	result.allow
}

page_of(resources) := {
	"action": "catalog.list",
	"subject": base.subject,
	"resources": resources,
	"context": base.context,
}

test_allow_list_shows_visible_ids_only if {
	open := base.resource
	core := object.union(base.resource, {"id": "c", "grade": "core"})
	roles := object.union(base.resource, {"id": "r", "access": {"roles": ["government"]}})
	attrs := object.union(base.resource, {"id": "t", "access": {"attrs": {"org": "A"}}})
	doc := page_of([open, core, roles, attrs])
	result := access.list_decision with input as doc
	result.allow
	sort(result.visible_ids) == ["p", "t"]
}

test_deny_list_hides_everything_denied if {
	listed := object.union(base.resource, {"access": {"allow_list": ["someone-else"]}})
	doc := page_of([listed])
	result := access.list_decision with input as doc
	count(result.visible_ids) == 0
}

test_deny_list_core_even_to_its_owner if {
	owner := object.union(base, {"subject": {"id": "gov", "role": "government", "attrs": {}, "grants": []}})
	core := object.union(base.resource, {"id": "c", "grade": "core"})
	ruled := object.union(base.resource, {"id": "r", "access": {"roles": ["auditor"]}})
	doc := object.union(page_of([core, ruled]), {"subject": owner.subject})
	result := access.list_decision with input as doc
	result.visible_ids == ["r"]
}
