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
