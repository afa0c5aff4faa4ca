# Whether one transfer under an agreement may start now, or a stream go on: not revoked,
# inside its window, under its count, message and byte limits (in all and per period), consent still in force for personal data, the grant
# still current for public data, never core data; important data only in the permitted
# fields, masked as the agreement says.
#
# The same rules decide one computation (`compute.run`, 可用不可见): the agreement's terms,
# consent and grant as for a copy, the delivery the offer allows (a compute-only offer
# refuses copies, a copy-only offer computations), the query inside the declared rules,
# and the privacy budget (ε) as a limit like the transfer count.
#
# This runs before every transfer, so it is written for speed as well as for reading.
# rego-cpp finds an object member by comparing keys one at a time, so the input sections
# are looked up once per decision, as the rules `contract`, `context` and `resource`
# (a complete rule is evaluated once and shared), and the decision is built as one
# object rather than merged from defaults.
package tds.usage

import data.tds.common
import data.tds.obligations
import data.tds.settings
import rego.v1

contract := input.contract

context := common.context

resource := common.resource

deny contains "core_data" if common.is_core

deny contains reason if some reason in agreement_denials

deny contains reason if {
	common.is_personal
	some reason in common.consent_denials(contract.purpose)
}

deny contains reason if {
	common.is_public
	some reason in common.grant_denials(contract.purpose)
}

deny contains reason if some reason in field_denials

deny contains reason if some reason in delivery_denials

deny contains reason if some reason in compute_denials

deny contains reason if some reason in common.provider_denials

# The agreement's own terms, each reason beside the condition that gives it.
agreement_denials contains "agreement_revoked" if contract.revoked == true

agreement_denials contains "agreement_revoked" if object.get(context, "revoked", false) == true

agreement_denials contains "agreement_not_yet_valid" if common.now < contract.valid_from_ns

agreement_denials contains "agreement_expired" if common.now >= contract.valid_until_ns

agreement_denials contains "transfer_limit_reached" if {
	is_transfer
	over_limit(contract.max_transfers, context.transfers_used + 1)
}

agreement_denials contains "byte_limit_reached" if {
	moves_bytes
	over_limit(contract.max_bytes, context.bytes_used + object.get(context, "request_bytes", 0))
}

# A stream's message limit, and its limits per period (the connector gives what the current
# hour or day has used): one more message must fit for the stream to go on.
agreement_denials contains "message_limit_reached" if {
	is_stream
	over_limit(contract.max_messages, context.messages_used + 1)
}

agreement_denials contains "period_message_limit_reached" if {
	is_stream
	over_limit(contract.period_max_messages, context.period_messages_used + 1)
}

agreement_denials contains "period_byte_limit_reached" if {
	is_stream
	over_limit(contract.period_max_bytes, context.period_bytes_used + object.get(context, "request_bytes", 0))
}

is_transfer if input.action == "transfer.start"

is_stream if input.action == "stream.continue"

is_compute if input.action == "compute.run"

# Copies and streams count bytes against the agreement's byte limit; answers count ε.
moves_bytes if is_transfer

moves_bytes if is_stream

# How the agreement lets the product leave (agreements without the term are copies).
delivery := object.get(contract, "delivery", ["copy"])

delivery_denials contains "copy_not_offered" if {
	is_transfer
	not "copy" in delivery
}

delivery_denials contains "compute_not_offered" if {
	is_compute
	not "compute" in delivery
}

# The operator's opt-in rule (policies/tds/settings.rego): important data leaves only as
# answers, never as copies.
delivery_denials contains "important_data_requires_compute" if {
	is_transfer
	settings.important_requires_compute == true
	common.is_important
}

# The query asked, against the rules the agreement carries. The connector has checked it
# already; these rules say the same in the policy, where a provider's module can add its own.
query := object.get(input, "query", {})

rules := object.get(contract, "compute", {})

compute_denials contains "compute_rules_missing" if {
	is_compute
	count(rules) == 0
}

compute_denials contains "dimension_not_declared" if {
	is_compute
	some name in query.dimensions
	not object.get(rules, ["dimensions", name], false)
}

compute_denials contains "measure_not_declared" if {
	is_compute
	some name in query.measures
	not object.get(rules, ["measures", name], false)
}

compute_denials contains "aggregate_not_declared" if {
	is_compute
	some label in query.aggregates
	not label in declared_aggregates
}

# count(*) is always allowed: it is what k counts.
count_label := "count"

# The aggregates the rules allow, named as the connector labels them in input.query:
# count, avg(cost), quantile(cost,0.5).
declared_aggregates contains count_label

declared_aggregates contains label if {
	some name, measure in object.get(rules, "measures", {})
	some fn in measure.aggregates
	fn != "quantile"
	label := sprintf("%s(%s)", [fn, name])
}

declared_aggregates contains label if {
	some name, measure in object.get(rules, "measures", {})
	some q in object.get(measure, "quantiles", [])
	label := sprintf("quantile(%s,%v)", [name, q])
}

# The privacy budget (ε) is a limit like the transfer count: a query that would spend more
# than is left is refused before anything is computed. The connector meters ε in integer
# millionths and gives what is left (adding floats here could refuse the last query).
compute_denials contains "privacy_budget_exhausted" if {
	is_compute
	object.get(rules, ["privacy", "epsilon_budget"], 0) > 0
	query.epsilon > context.epsilon_left
}

# A limit of 0 means none.
over_limit(limit, wanted) := wanted > limit if limit > 0 else := false

# Structured important data is delivered only in the fields the agreement permits; an
# opaque file (no fields) has nothing to project.
field_denials contains "no_field_policy" if {
	structured_important
	count(permitted_fields) == 0
}

field_denials contains "field_not_in_product" if {
	structured_important
	fields := resource.fields
	some field in permitted_fields
	not field in fields
}

permitted_fields := object.get(contract, "permitted_fields", [])

structured_important if {
	is_transfer
	"copy" in delivery
	common.is_important
	count(resource.fields) > 0
}

# Structured important data carries its field policy. Other data carries the field list
# and masks its agreement gives, if any: an offer's masks are never dropped because the
# data is not important (an empty list there means "every field", as for no list).
decision := {
	"allow": count(deny) == 0,
	"deny": deny,
	"needs_approval": false,
	"obligations": obligations.for_contract,
	"permitted_fields": permitted_fields,
	"masks": object.get(contract, "masks", {}),
} if structured_important else := common.decision(deny, object.union(
	{"obligations": obligations.for_contract, "masks": object.get(contract, "masks", {})},
	listed_fields,
))

listed_fields := {"permitted_fields": permitted_fields} if count(permitted_fields) > 0 else := {}
