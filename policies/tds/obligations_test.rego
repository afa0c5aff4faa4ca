package tds.obligations_test

import data.tds.obligations
import rego.v1

now := 1800000000000000000

base := {
	"resource": {"personal": false},
	"offer": {"obligations": {"delete_after_ns": now + 10}},
	"contract": {"valid_until_ns": now + 100, "obligations": {"delete_after_ns": now + 500}},
	"context": {"now_ns": now},
}

test_allow_offer_obligations_pass_through if {
	doc := object.union(base, {})
	result := obligations.for_offer with input as doc
	result == {"delete_after_ns": now + 10}
}

test_allow_delete_after_capped_by_agreement if {
	doc := object.union(base, {})
	result := obligations.for_contract with input as doc
	result.delete_after_ns == now + 100
}

test_allow_personal_adds_deletion_on_withdrawal if {
	doc := object.union(base, {"resource": {"personal": true}})
	result := obligations.for_contract with input as doc
	result.delete_on_consent_withdrawal
}

grant(id, start, end) := {
	"id": id,
	"scope": ["traffic"],
	"purposes": ["analytics"],
	"start_ns": start,
	"end_ns": end,
}

public := object.union(base, {
	"resource": {"registration_code": "REG-1", "tags": ["traffic"], "domain": ""},
	"contract": {"purpose": "analytics"},
})

test_allow_public_agreement_names_the_covering_grant if {
	doc := object.union(public, {"subject": {"grants": [
		grant("gr-b", now - 10, now + 10),
		grant("gr-a", now - 10, now + 10),
		grant("gr-0", now + 5, now + 10),
	]}})
	result := obligations.for_offer with input as doc
	result.operation_grant == "gr-a"
}

test_deny_no_grant_named_without_a_current_grant if {
	doc := object.union(public, {"subject": {"grants": [grant("gr-0", now + 5, now + 10)]}})
	result := obligations.for_offer with input as doc
	not result.operation_grant
}

test_allow_personal_agreement_names_the_consent if {
	doc := object.union(base, {
		"resource": {"personal": true},
		"context": {"consent": {"present": true, "id": "cs-1"}},
	})
	result := obligations.for_offer with input as doc
	result.consent == "cs-1"
	result.delete_on_consent_withdrawal
}
