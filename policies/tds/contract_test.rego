package tds.contract_test

import data.tds.contract
import rego.v1

now := 1800000000000000000

year := 365 * 86400000000000

base := {
	"action": "contract.request",
	"subject": {"id": "ent-a", "role": "enterprise", "attrs": {}, "grants": []},
	"resource": {
		"id": "p", "owner": "gov", "grade": "general", "tags": ["traffic"], "fields": [],
		"registration_code": "", "personal": false, "access": {},
	},
	"offer": {
		"id": "o", "purposes": ["planning"], "valid_from_ns": now - 1, "valid_until_ns": now + year,
		"max_transfers": 3, "max_bytes": 0, "obligations": {}, "policy_module": "",
	},
	"contract": {"purpose": "planning"},
	"context": {"now_ns": now, "consent": {}},
}

patch(section, fields) := object.union(base, {section: object.union(base[section], fields)})

public := patch("resource", {"registration_code": "SH-1"})

grant := {"scope": ["traffic"], "purposes": ["planning"], "start_ns": now - year, "end_ns": now + year}

test_allow_general if {
	doc := object.union(base, {})
	result := contract.decision with input as doc
	result.allow
}

test_allow_important_needs_approval if {
	doc := patch("resource", {"grade": "important"})
	d := contract.decision with input as doc
	d.allow
	d.needs_approval
}

test_deny_purpose if {
	doc := patch("contract", {"purpose": "ads"})
	result := contract.decision with input as doc
	"purpose_not_offered" in result.deny
}

test_deny_expired_offer if {
	doc := patch("offer", {"valid_until_ns": now})
	result := contract.decision with input as doc
	"offer_expired" in result.deny
}

test_deny_core if {
	doc := patch("resource", {"grade": "core"})
	result := contract.decision with input as doc
	"core_data" in result.deny
}

test_deny_public_without_grant if {
	doc := object.union(public, {})
	result := contract.decision with input as doc
	"no_operation_grant" in result.deny
}

test_allow_public_with_grant if {
	doc := object.union(public, {"subject": object.union(base.subject, {"grants": [grant]})})
	result := contract.decision with input as doc
	result.allow
}

test_deny_public_grant_too_long if {
	long := object.union(grant, {"start_ns": now - (3 * year), "end_ns": now + (3 * year)})
	doc := object.union(public, {"subject": object.union(base.subject, {"grants": [long]})})
	result := contract.decision with input as doc
	"grant_term_exceeds_5_years" in result.deny
}

test_deny_personal_without_consent if {
	doc := patch("resource", {"personal": true})
	result := contract.decision with input as doc
	"no_consent" in result.deny
}

test_allow_personal_with_consent if {
	consent := {"present": true, "withdrawn": false, "recipient": "ent-a", "purposes": ["planning"], "expires_ns": now + year}
	doc := object.union(patch("resource", {"personal": true}), {"context": {"now_ns": now, "consent": consent}})
	result := contract.decision with input as doc
	result.allow
}

test_visible_when_the_access_policy_lets_the_subject_see_it if {
	d := contract.decision with input as base
	d.visible == true
}

test_hidden_when_the_access_policy_does_not if {
	doc := patch("resource", {"access": {"allow_list": ["ent-b"]}})
	d := contract.decision with input as doc
	d.visible == false
	not d.allow
	"not_on_allow_list" in d.deny
}

test_visible_although_refused_for_another_reason if {
	doc := patch("contract", {"purpose": "marketing"})
	d := contract.decision with input as doc
	d.visible == true
	not d.allow
}
