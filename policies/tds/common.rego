# Shared helpers of the tds city policy library (Rego v1, no http.send, no net.cidr_*,
# times as integer nanoseconds supplied by the connector in input.context.now_ns).
#
# The connector checks the input's shape before any engine sees it (every field these
# rules read is present with its type, connector/policy/shape.py), so rules read fields
# directly; a document that fails that check is denied `invalid_input` without evaluation.
package tds.common

import rego.v1

five_years_ns := ((5 * 365) + 2) * 86400000000000

context := input.context

now := context.now_ns

resource := input.resource

grade := resource.grade

is_core if grade == "core"

is_important if grade == "important"

is_public if resource.registration_code != ""

is_personal if resource.personal == true

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

# Grants the operator has revoked, from its signed revocation list as the connector holds
# it: a token issued before the revocation still carries them until it is refreshed.
revoked_grants := object.get(context, "revoked_grants", [])

grant_revoked(grant) if grant.id in revoked_grants

grant_valid_for(purpose, grant) if {
	covers_scope(grant)
	purpose in grant.purposes
	grant_current(grant)
	grant_term_ok(grant)
}

# Why no grant lets this subject operate this public resource for purpose, in the order a
# person would check: none at all, revoked, wrong scope, wrong purpose, not current, term
# too long.
grant_denials(purpose) := set() if {
	some grant in grants
	not grant_revoked(grant)
	grant_valid_for(purpose, grant)
} else := {"no_operation_grant"} if {
	count(grants) == 0
} else := {"operation_grant_revoked"} if {
	# Only a revoked grant would have allowed it.
	some grant in grants
	grant_valid_for(purpose, grant)
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
consent := object.get(context, "consent", {})

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
provider_denials := set() if {
	object.get(input.offer, "policy_module", "") == ""
} else := {"provider_policy_missing"} if {
	not provider_module_present(input.offer.policy_module)
} else := {reason | some reason in data.tds.provider[input.offer.policy_module].deny}

provider_module_present(module) if {
	_ = data.tds.provider[module].deny
}

# The decision document every action returns: its denials and what it adds.
decision(deny, extra) := object.union(
	{
		"allow": count(deny) == 0,
		"deny": deny,
		"needs_approval": false,
		"obligations": {},
		"permitted_fields": null,
		"masks": {},
	},
	extra,
)
