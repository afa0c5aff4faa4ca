package tds.usage_test

import data.tds.usage
import rego.v1

now := 1800000000000000000

day := 86400000000000

base := {
	"action": "transfer.start",
	"subject": {"id": "ent-a", "role": "enterprise", "attrs": {}, "grants": []},
	"resource": {
		"id": "p", "owner": "gov", "grade": "general", "tags": [], "fields": ["a", "b"],
		"registration_code": "", "personal": false, "access": {},
	},
	"offer": {"policy_module": ""},
	"contract": {
		"purpose": "planning", "valid_from_ns": now - day, "valid_until_ns": now + day,
		"max_transfers": 3, "max_bytes": 100, "revoked": false, "permitted_fields": [],
		"masks": {}, "obligations": {},
	},
	"context": {"now_ns": now, "transfers_used": 0, "bytes_used": 0, "revoked": false, "consent": {}},
}

patch(section, fields) := object.union(base, {section: object.union(base[section], fields)})

test_allow_transfer if {
	doc := object.union(base, {})
	result := usage.decision with input as doc
	result.allow
}

test_deny_revoked if {
	doc := patch("contract", {"revoked": true})
	result := usage.decision with input as doc
	"agreement_revoked" in result.deny
}

test_deny_expired if {
	doc := patch("contract", {"valid_until_ns": now})
	result := usage.decision with input as doc
	"agreement_expired" in result.deny
}

test_deny_transfer_limit if {
	doc := patch("context", {"transfers_used": 3})
	result := usage.decision with input as doc
	"transfer_limit_reached" in result.deny
}

test_deny_byte_limit if {
	doc := patch("context", {"bytes_used": 101})
	result := usage.decision with input as doc
	"byte_limit_reached" in result.deny
}

stream_base := object.union(base, {
	"action": "stream.continue",
	"contract": object.union(base.contract, {"max_messages": 10, "period_max_messages": 4, "period_max_bytes": 0}),
	"context": object.union(base.context, {"request_bytes": 1, "messages_used": 0, "period_messages_used": 0, "period_bytes_used": 0}),
})

test_allow_stream_below_its_limits if {
	doc := object.union(stream_base, {"context": object.union(stream_base.context, {"messages_used": 9, "period_messages_used": 3})})
	result := usage.decision with input as doc
	result.allow
}

test_deny_stream_message_limit if {
	doc := object.union(stream_base, {"context": object.union(stream_base.context, {"messages_used": 10})})
	result := usage.decision with input as doc
	result.deny == {"message_limit_reached"}
}

test_deny_stream_period_message_limit if {
	doc := object.union(stream_base, {"context": object.union(stream_base.context, {"messages_used": 4, "period_messages_used": 4})})
	result := usage.decision with input as doc
	result.deny == {"period_message_limit_reached"}
}

test_deny_stream_period_byte_limit if {
	doc := object.union(stream_base, {
		"contract": object.union(stream_base.contract, {"period_max_bytes": 50}),
		"context": object.union(stream_base.context, {"period_bytes_used": 50}),
	})
	result := usage.decision with input as doc
	result.deny == {"period_byte_limit_reached"}
}

test_deny_consent_withdrawn if {
	doc := object.union(patch("resource", {"personal": true}), {"context": object.union(base.context, {"consent": {"present": true, "withdrawn": true}})})
	result := usage.decision with input as doc
	"consent_withdrawn" in result.deny
}

test_allow_important_fields if {
	doc := object.union(patch("resource", {"grade": "important"}), {"contract": object.union(base.contract, {"permitted_fields": ["a"]})})
	d := usage.decision with input as doc
	d.allow
	d.permitted_fields == ["a"]
}

test_allow_general_keeps_the_agreements_fields_and_masks if {
	doc := patch("contract", {"permitted_fields": ["a"], "masks": {"a": {"method": "hash"}}})
	d := usage.decision with input as doc
	d.allow
	d.permitted_fields == ["a"]
	d.masks == {"a": {"method": "hash"}}
}

test_allow_general_without_a_field_list_delivers_every_field if {
	doc := patch("contract", {"masks": {"b": {"method": "redact"}}})
	d := usage.decision with input as doc
	d.allow
	d.permitted_fields == null
	d.masks == {"b": {"method": "redact"}}
}

test_deny_important_without_fields if {
	doc := patch("resource", {"grade": "important"})
	result := usage.decision with input as doc
	"no_field_policy" in result.deny
}

test_deny_core if {
	doc := patch("resource", {"grade": "core"})
	result := usage.decision with input as doc
	"core_data" in result.deny
}

grant := {"id": "g1", "scope": ["traffic"], "purposes": ["planning"], "start_ns": now - day, "end_ns": now + day}

public_with(grants, revoked_grants) := object.union(base, {
	"subject": object.union(base.subject, {"grants": grants}),
	"resource": object.union(base.resource, {"registration_code": "R-1", "tags": ["traffic"]}),
	"context": object.union(base.context, {"revoked_grants": revoked_grants}),
})

test_allow_public_within_grant if {
	doc := public_with([grant], [])
	result := usage.decision with input as doc
	result.allow
}

test_deny_public_grant_revoked if {
	doc := public_with([grant], ["g1"])
	result := usage.decision with input as doc
	result.deny == {"operation_grant_revoked"}
}

test_allow_public_other_grant_revoked if {
	other := object.union(grant, {"id": "g2"})
	doc := public_with([grant, other], ["g2"])
	result := usage.decision with input as doc
	result.allow
}

# compute.run (可用不可见): the same contract checks, the delivery, the rules, the budget.
compute_contract := object.union(base.contract, {
	"delivery": ["compute"],
	"compute": {
		"k": 10,
		"dimensions": {"a": {"type": "text"}},
		"measures": {"b": {"aggregates": ["count", "avg"], "lower": 0, "upper": 10}},
		"privacy": {"epsilon_per_query": 0.5, "epsilon_budget": 1.0, "delta": 0.0000001},
	},
})

compute_base := object.union(base, {
	"action": "compute.run",
	"contract": compute_contract,
	"context": object.union(base.context, {"epsilon_spent": 0, "epsilon_left": 1.0, "computations_used": 0}),
	"query": {"dimensions": ["a"], "filtered": ["a"], "measures": ["b"], "aggregates": ["count", "avg(b)"], "epsilon": 0.5},
})

test_allow_compute if {
	doc := object.union(compute_base, {})
	result := usage.decision with input as doc
	result.allow
}

test_deny_copy_of_compute_only_offer if {
	doc := object.union(compute_base, {"action": "transfer.start"})
	result := usage.decision with input as doc
	"copy_not_offered" in result.deny
}

test_deny_compute_on_copy_only_offer if {
	doc := object.union(compute_base, {"contract": object.union(compute_contract, {"delivery": ["copy"]})})
	result := usage.decision with input as doc
	"compute_not_offered" in result.deny
}

test_deny_compute_budget_exhausted if {
	doc := object.union(compute_base, {"context": object.union(compute_base.context, {"epsilon_spent": 0.75, "epsilon_left": 0.25})})
	result := usage.decision with input as doc
	"privacy_budget_exhausted" in result.deny
}

test_allow_compute_spending_the_last_of_the_budget if {
	doc := object.union(compute_base, {"context": object.union(compute_base.context, {"epsilon_spent": 0.5, "epsilon_left": 0.5})})
	result := usage.decision with input as doc
	result.allow
}

test_deny_compute_undeclared_dimension if {
	doc := object.union(compute_base, {"query": object.union(compute_base.query, {"dimensions": ["patient_id"]})})
	result := usage.decision with input as doc
	"dimension_not_declared" in result.deny
}

test_deny_compute_undeclared_aggregate if {
	doc := object.union(compute_base, {"query": object.union(compute_base.query, {"aggregates": ["max(b)"]})})
	result := usage.decision with input as doc
	"aggregate_not_declared" in result.deny
}

test_deny_compute_revoked if {
	doc := object.union(compute_base, {"contract": object.union(compute_contract, {"revoked": true})})
	result := usage.decision with input as doc
	"agreement_revoked" in result.deny
}

test_deny_compute_expired if {
	doc := object.union(compute_base, {"contract": object.union(compute_contract, {"valid_until_ns": now})})
	result := usage.decision with input as doc
	"agreement_expired" in result.deny
}

test_deny_compute_personal_without_consent if {
	doc := object.union(compute_base, {"resource": object.union(base.resource, {"personal": true})})
	result := usage.decision with input as doc
	"no_consent" in result.deny
}

test_allow_compute_ignores_transfer_count if {
	doc := object.union(compute_base, {"context": object.union(compute_base.context, {"transfers_used": 3})})
	result := usage.decision with input as doc
	result.allow
}

test_allow_compute_on_important_data_without_fields if {
	doc := object.union(compute_base, {"resource": object.union(base.resource, {"grade": "important"})})
	result := usage.decision with input as doc
	result.allow
}

test_deny_compute_undeclared_measure if {
	doc := object.union(compute_base, {"query": object.union(compute_base.query, {"measures": ["cost"], "aggregates": ["sum(cost)"]})})
	result := usage.decision with input as doc
	"measure_not_declared" in result.deny
	"aggregate_not_declared" in result.deny
}
