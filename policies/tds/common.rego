# Shared helpers of the tds city policy library (Rego v1, no http.send, no net.cidr_*,
# times as integer nanoseconds supplied by the connector in input.context.now_ns).
package tds.common

import rego.v1

five_years_ns := ((5 * 365) + 2) * 86400000000000

now := input.context.now_ns

is_core if input.resource.grade == "core"

is_important if input.resource.grade == "important"

is_public if input.resource.registration_code != ""

is_personal if input.resource.personal == true

# Authorised-operation grants (公共数据授权运营) carried in the subject's membership.
grants := object.get(input.subject, "grants", [])

covers_scope(grant) if {
	some tag in input.resource.tags
	tag in grant.scope
}

covers_scope(grant) if input.resource.domain in grant.scope

grant_current(grant) if {
	grant.start_ns <= now
	now < grant.end_ns
}

grant_term_ok(grant) if grant.end_ns - grant.start_ns <= five_years_ns

grant_valid_for(purpose, grant) if {
	covers_scope(grant)
	purpose in grant.purposes
	grant_current(grant)
	grant_term_ok(grant)
}

# Why no grant lets this subject operate this public resource for purpose, in the order a
# person would check: none at all, wrong scope, wrong purpose, not current, term too long.
grant_denials(purpose) := set() if {
	some grant in grants
	grant_valid_for(purpose, grant)
} else := {"no_operation_grant"} if {
	count(grants) == 0
} else := {"outside_grant_scope"} if {
	not any_grant_covers
} else := {"purpose_outside_grant"} if {
	not any_grant_purpose(purpose)
} else := {"grant_not_current"} if {
	not any_grant_current(purpose)
} else := {"grant_term_exceeds_5_years"}

any_grant_covers if {
	some grant in grants
	covers_scope(grant)
}

any_grant_purpose(purpose) if {
	some grant in grants
	covers_scope(grant)
	purpose in grant.purposes
}

any_grant_current(purpose) if {
	some grant in grants
	covers_scope(grant)
	purpose in grant.purposes
	grant_current(grant)
}

# Separate consent (PIPL art. 23) of the individual for this recipient and purpose.
consent := object.get(input.context, "consent", {})

consent_denials(purpose) := {"no_consent"} if {
	not consent.present
} else := {"consent_withdrawn"} if {
	consent.withdrawn
} else := {"consent_expired"} if {
	consent.expires_ns <= now
} else := {"consent_recipient_mismatch"} if {
	consent.recipient != input.subject.id
} else := {"consent_purpose_mismatch"} if {
	not purpose in consent.purposes
} else := set()

# Denials a provider's own module adds for this offer (it can only add, never lift).
provider_denials contains reason if {
	module := input.offer.policy_module
	module != ""
	some reason in data.tds.provider[module].deny
}

provider_denials contains "provider_policy_missing" if {
	module := input.offer.policy_module
	module != ""
	not provider_module_present(module)
}

provider_module_present(module) if {
	_ = data.tds.provider[module].deny
}

# With an invalid input, other reasons may be artefacts of the missing field: say only
# what to fix.
effective(deny) := input_denials if count(input_denials) > 0 else := deny

decision(deny, extra) := object.union(
	{
		"allow": count(effective(deny)) == 0,
		"deny": effective(deny),
		"needs_approval": false,
		"obligations": {},
		"permitted_fields": null,
		"masks": {},
	},
	extra,
)

# Input checks: a field a rule needs but the input lacks (or has with the wrong type)
# must never silently allow. `not is_T(x)` holds when x is missing or not a T.

invalid_input contains "action" if not is_string(input.action)

invalid_input contains "subject.id" if not is_string(input.subject.id)

invalid_input contains "subject.role" if not is_string(input.subject.role)

invalid_input contains "resource.id" if not is_string(input.resource.id)

invalid_input contains "resource.owner" if not is_string(input.resource.owner)

invalid_input contains "resource.registration_code" if not is_string(input.resource.registration_code)

invalid_input contains "resource.tags" if not is_array(input.resource.tags)

invalid_input contains "resource.fields" if not is_array(input.resource.fields)

invalid_input contains "resource.personal" if not is_boolean(input.resource.personal)

invalid_input contains "context.now_ns" if not is_number(input.context.now_ns)

invalid_input contains "resource.grade" if not input.resource.grade in {"general", "important", "core"}

invalid_input contains "offer.purposes" if {
	input.action == "contract.request"
	not is_array(input.offer.purposes)
}

invalid_input contains "offer.valid_from_ns" if {
	input.action == "contract.request"
	not is_number(input.offer.valid_from_ns)
}

invalid_input contains "offer.valid_until_ns" if {
	input.action == "contract.request"
	not is_number(input.offer.valid_until_ns)
}

invalid_input contains "contract.purpose" if {
	input.action == "contract.request"
	not is_string(input.contract.purpose)
}

invalid_input contains "contract.purpose" if {
	input.action == "transfer.start"
	not is_string(input.contract.purpose)
}

invalid_input contains "contract.valid_from_ns" if {
	input.action == "transfer.start"
	not is_number(input.contract.valid_from_ns)
}

invalid_input contains "contract.valid_until_ns" if {
	input.action == "transfer.start"
	not is_number(input.contract.valid_until_ns)
}

invalid_input contains "contract.max_transfers" if {
	input.action == "transfer.start"
	not is_number(input.contract.max_transfers)
}

invalid_input contains "contract.max_bytes" if {
	input.action == "transfer.start"
	not is_number(input.contract.max_bytes)
}

invalid_input contains "contract.revoked" if {
	input.action == "transfer.start"
	not is_boolean(input.contract.revoked)
}

invalid_input contains "context.transfers_used" if {
	input.action == "transfer.start"
	not is_number(input.context.transfers_used)
}

invalid_input contains "context.bytes_used" if {
	input.action == "transfer.start"
	not is_number(input.context.bytes_used)
}

input_denials := {"invalid_input"} if count(invalid_input) > 0 else := set()
