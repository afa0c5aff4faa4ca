# Whether one transfer under an agreement may start now: not revoked, inside its window,
# under its count and byte limits, consent still in force for personal data, the grant
# still current for public data, never core data; important data only in the permitted
# fields, masked as the agreement says.
#
# This runs before every transfer, so it is written for speed as well as for reading.
# rego-cpp finds an object member by comparing keys one at a time, so the input sections
# are looked up once per decision, as the rules `contract`, `context` and `resource`
# (a complete rule is evaluated once and shared), and the decision is built as one
# object rather than merged from defaults.
package tds.usage

import data.tds.common
import data.tds.obligations
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

deny contains reason if some reason in common.provider_denials

# The agreement's own terms, each reason beside the condition that gives it.
agreement_denials contains "agreement_revoked" if contract.revoked == true

agreement_denials contains "agreement_revoked" if object.get(context, "revoked", false) == true

agreement_denials contains "agreement_not_yet_valid" if common.now < contract.valid_from_ns

agreement_denials contains "agreement_expired" if common.now >= contract.valid_until_ns

agreement_denials contains "transfer_limit_reached" if over_limit(contract.max_transfers, context.transfers_used + 1)

agreement_denials contains "byte_limit_reached" if {
	over_limit(contract.max_bytes, context.bytes_used + object.get(context, "request_bytes", 0))
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
