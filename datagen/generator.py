"""Deterministic synthetic CFPB complaints in the official CSV export format.

Why: the demo, the tests and the benchmarks need data at any size that behaves like a real CFPB
export (multi-line quoted narratives, masked ZIPs, blank labels, skewed categories) and carries a
learnable but noisy dispute signal, without downloading anything.

How the label is made: every complaint gets a dispute log-odds from its product, company
response, issue, company, state, timely flag, public response, channel and tags, plus a hidden
"frustration" value that also decides which tone words its narrative uses (so words carry
signal only where a narrative exists). An intercept, solved once per requested rate on a fixed
calibration sample, makes the disputed share among labelled rows match `disputed_rate`.
Changing only `disputed_rate` keeps every other field identical: a pure label shift.

All randomness is `random.Random(seed).random()` (stable across platforms and Python versions)
and the only float library call is `exp` in the dispute probability, so the same (rows, seed,
options) give byte-identical files on every machine.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

HEADER = (
    "Date received",
    "Product",
    "Sub-product",
    "Issue",
    "Sub-issue",
    "Consumer complaint narrative",
    "Company public response",
    "Company",
    "State",
    "ZIP code",
    "Tags",
    "Consumer consent provided?",
    "Submitted via",
    "Date sent to company",
    "Company response to consumer",
    "Timely response?",
    "Consumer disputed?",
    "Complaint ID",
)

FIRST_DATE = date(2015, 1, 1)
LAST_DATE = date(2017, 4, 24)  # the CFPB stopped recording disputes after this day
DEFAULT_DISPUTED_RATE = 0.25
DEFAULT_BLANK_LABEL_RATE = 0.03

# --------------------------------------------------------------------------------------------
# Catalog. Weights are relative frequencies; effects are additions to the dispute log-odds.
# --------------------------------------------------------------------------------------------

EXPLANATION = "Closed with explanation"
NON_MONETARY = "Closed with non-monetary relief"
MONETARY = "Closed with monetary relief"
CLOSED = "Closed"
UNTIMELY = "Untimely response"
IN_PROGRESS = "In progress"

RESPONSE_EFFECT = {
    EXPLANATION: 0.35,
    NON_MONETARY: -0.45,
    MONETARY: -1.4,
    CLOSED: 0.1,
    UNTIMELY: 0.9,
}
DEFAULT_RESPONSE_MIX = (0.74, 0.13, 0.08, 0.03, 0.02)  # same order as RESPONSE_EFFECT

BANKS = (
    ("Bank of America", 10), ("Wells Fargo & Company", 9), ("JPMorgan Chase & Co.", 8),
    ("Citibank", 6), ("Capital One", 4), ("U.S. Bancorp", 3), ("PNC Bank N.A.", 2),
    ("SunTrust Banks, Inc.", 2), ("TD Bank US Holding Company", 1.5),
    ("Regions Financial Corporation", 1), ("Fifth Third Financial Corporation", 1),
    ("BB&T Financial", 1), ("Citizens Financial Group, Inc.", 1),
    ("HSBC North America Holdings Inc.", 1), ("KeyBank NA", 0.5), ("M&T Bank Corporation", 0.5),
)
COLLECTORS = (
    ("Encore Capital Group", 8), ("Portfolio Recovery Associates, Inc.", 6),
    ("Expert Global Solutions, Inc.", 2), ("Convergent Resources, Inc.", 2),
    ("Transworld Systems Inc.", 3), ("ERC", 2), ("Afni, Inc.", 2),
    ("Diversified Consultants, Inc.", 1.5), ("I.C. System, Inc.", 1.5),
    ("Cavalry Investments, LLC", 1), ("Resurgent Capital Services L.P.", 1),
    ("Hunter Warfield, Inc.", 0.5), ("Stellar Recovery Inc.", 0.5),
)
SERVICERS = (
    ("Ocwen", 6), ("Nationstar Mortgage", 5), ("Ditech Financial LLC", 3),
    ("Select Portfolio Servicing, Inc", 1.5), ("Quicken Loans", 1), ("PHH Mortgage", 1),
    ("Seterus, Inc.", 1), ("Specialized Loan Servicing LLC", 1), ("Flagstar Bank", 0.5),
    ("Loan Care", 0.5),
)
BUREAUS = (
    ("Equifax", 10), ("Experian", 10), ("TransUnion Intermediate Holdings, Inc.", 9),
)
CARD_ISSUERS = (
    ("Synchrony Financial", 5), ("Amex", 4), ("Discover", 3), ("Barclays PLC", 2),
)
STUDENT_SERVICERS = (
    ("Navient Solutions, Inc.", 12), ("AES/PHEAA", 4), ("Nelnet, Inc.", 2),
    ("Great Lakes Educational Loan Services, Inc.", 1),
)
AUTO_LENDERS = (
    ("Santander Consumer USA Holdings Inc", 5), ("Ally Financial Inc.", 4),
    ("Toyota Motor Credit Corporation", 1.5), ("Credit Acceptance Corporation", 1.5),
    ("Exeter Finance Corp.", 1), ("Nissan Motor Acceptance Corporation", 1),
    ("OneMain Financial Holdings, LLC", 2),
)
PREPAID = (
    ("Green Dot Corporation", 4), ("NetSpend Corporation", 4), ("PayPal Holdings, Inc.", 2),
    ("Conduent Business Services, LLC", 1),
)
TRANSFERS = (
    ("PayPal Holdings, Inc.", 5), ("The Western Union Company", 4),
    ("MoneyGram International Inc", 2), ("Coinbase, Inc.", 1),
)
PAYDAY = (
    ("CashCall, Inc.", 3), ("Enova International, Inc.", 3), ("CNG Financial Corporation", 2),
    ("Community Choice Financial Inc.", 1.5), ("Ace Cash Express Inc.", 1.5),
    ("Elevate Credit, Inc.", 1),
)
OTHER_SERVICES = (
    ("Freedom Financial Network", 2), ("Global Client Solutions", 1),
    ("The Western Union Company", 1.5), ("MoneyGram International Inc", 1),
)


def _scaled(pairs: tuple, factor: float) -> tuple:
    return tuple((name, weight * factor) for name, weight in pairs)


COMPANY_EFFECT = {
    "Ocwen": 0.35, "Nationstar Mortgage": 0.3, "Navient Solutions, Inc.": 0.25,
    "Ditech Financial LLC": 0.2, "Equifax": 0.1, "Santander Consumer USA Holdings Inc": 0.15,
    "Amex": -0.35, "Discover": -0.25, "Capital One": -0.1, "Synchrony Financial": -0.15,
    "PayPal Holdings, Inc.": -0.2, "Encore Capital Group": -0.1,
}

_DC_SUBS = ("Debt is not mine", "Debt was paid", "Debt resulted from identity theft",
            "Debt was discharged in bankruptcy")

# product: weight, dispute effect, amount scale (dollars), noun, sub-products, issues
# (issue, weight, sub-issues), company pool, response mix
PRODUCTS = {
    "Mortgage": dict(
        weight=22, effect=0.3, scale=1000, noun="mortgage",
        subs=(("Other mortgage", 25), ("Conventional fixed mortgage", 30), ("FHA mortgage", 13),
              ("Conventional adjustable mortgage (ARM)", 10),
              ("Home equity loan or line of credit", 8), ("VA mortgage", 4),
              ("Reverse mortgage", 1), ("Second mortgage", 1)),
        issues=(("Loan modification,collection,foreclosure", 45, ()),
                ("Loan servicing, payments, escrow account", 32, ()),
                ("Application, originator, mortgage broker", 9, ()),
                ("Settlement process and costs", 5, ()),
                ("Credit decision / Underwriting", 5, ()), ("Other", 4, ())),
        companies=BANKS + _scaled(SERVICERS, 1.5),
        responses=(0.8, 0.1, 0.05, 0.03, 0.02),
    ),
    "Debt collection": dict(
        weight=24, effect=-0.1, scale=100, noun="debt",
        subs=(("Other (i.e. phone, health club, etc.)", 25), ("I do not know", 20),
              ("Credit card", 20), ("Medical", 14), ("Payday loan", 4), ("Auto", 3),
              ("Mortgage", 3), ("Non-federal student loan", 4), ("Federal student loan", 3)),
        issues=(("Cont'd attempts collect debt not owed", 40, _DC_SUBS),
                ("Disclosure verification of debt", 16,
                 ("Not given enough info to verify debt", "Right to dispute notice not received",
                  "Not disclosed as an attempt to collect")),
                ("Communication tactics", 16,
                 ("Frequent or repeated calls", "Used obscene/profane/abusive language",
                  "Called outside of 8am-9pm", "You told them to stop contacting you")),
                ("False statements or representation", 10,
                 ("Attempted to collect wrong amount", "Impersonated an attorney or official",
                  "Indicated committed crime not paying")),
                ("Improper contact or sharing of info", 10,
                 ("Contacted me after I asked not to", "Talked to a third party about my debt",
                  "Contacted employer after asked not to")),
                ("Taking/threatening an illegal action", 8,
                 ("Threatened to sue on too old debt", "Threatened arrest/jail if do not pay",
                  "Sued w/o proper notification of suit", "Seized/Attempted to seize property"))),
        companies=_scaled(COLLECTORS, 2) + _scaled(BANKS, 0.3),
        responses=(0.72, 0.16, 0.02, 0.06, 0.04),
    ),
    "Credit reporting": dict(
        weight=20, effect=0.15, scale=100, noun="credit report", subs=(),
        issues=(("Incorrect information on credit report", 60,
                 ("Information is not mine", "Account status", "Account terms", "Public record",
                  "Personal information", "Reinserted previously deleted info")),
                ("Credit reporting company's investigation", 18,
                 ("Problem with statement of dispute", "Investigation took too long",
                  "No notice of investigation status/result", "Inadequate help over the phone")),
                ("Improper use of my credit report", 8,
                 ("Report improperly shared by CRC", "Received marketing offer after opted out",
                  "Report shared with employer w/o consent")),
                ("Unable to get credit report/credit score", 8,
                 ("Problem getting my free annual report",
                  "Problem getting report or credit score")),
                ("Credit monitoring or identity protection", 6,
                 ("Billing dispute", "Problem with fraud alerts",
                  "Problem cancelling or closing account"))),
        companies=BUREAUS + _scaled(BANKS, 0.05),
        responses=(0.72, 0.25, 0.005, 0.02, 0.005),
    ),
    "Credit card": dict(
        weight=11, effect=-0.2, scale=100, noun="credit card", subs=(),
        issues=(("Billing disputes", 18, ()), ("Other", 9, ()),
                ("Identity theft / Fraud / Embezzlement", 9, ()),
                ("Closing/Cancelling account", 8, ()), ("APR or interest rate", 7, ()),
                ("Late fee", 6, ()), ("Credit line increase/decrease", 5, ()),
                ("Rewards", 5, ()), ("Customer service / Customer relations", 5, ()),
                ("Credit card protection / Debt protection", 4, ()), ("Delinquent account", 4, ()),
                ("Billing statement", 3, ()), ("Transaction issue", 3, ()),
                ("Payoff process", 3, ()), ("Other fee", 3, ()), ("Balance transfer", 2, ()),
                ("Advertising and marketing", 2, ()), ("Credit determination", 1, ()),
                ("Application processing delay", 1, ()), ("Privacy", 1, ()),
                ("Unsolicited issuance of credit card", 1, ())),
        companies=_scaled(BANKS, 1) + _scaled(CARD_ISSUERS, 3),
        responses=(0.62, 0.14, 0.2, 0.02, 0.02),
    ),
    "Bank account or service": dict(
        weight=9, effect=0.0, scale=100, noun="bank account",
        subs=(("Checking account", 70), ("Savings account", 10), ("Other bank product/service", 14),
              ("(CD) Certificate of deposit", 4), ("Cashing a check without an account", 2)),
        issues=(("Account opening, closing, or management", 45, ()),
                ("Deposits and withdrawals", 28, ()),
                ("Problems caused by my funds being low", 12, ()),
                ("Making/receiving payments, sending money", 9, ()),
                ("Using a debit or ATM card", 6, ())),
        companies=BANKS,
        responses=(0.6, 0.1, 0.25, 0.03, 0.02),
    ),
    "Student loan": dict(
        weight=4, effect=0.35, scale=1000, noun="student loan",
        subs=(("Non-federal student loan", 55), ("Federal student loan servicing", 45)),
        issues=(("Dealing with my lender or servicer", 60,
                 ("Received bad information about my loan",
                  "Having problems with customer service",
                  "Trouble with how payments are being handled")),
                ("Can't repay my loan", 30,
                 ("Can't get flexible payment options", "Can't temporarily postpone payments",
                  "Problem lowering my monthly payments")),
                ("Getting a loan", 10, ())),
        companies=STUDENT_SERVICERS + _scaled(BANKS, 0.1),
        responses=(0.82, 0.1, 0.04, 0.02, 0.02),
    ),
    "Consumer Loan": dict(
        weight=3.5, effect=0.0, scale=1000, noun="loan",
        subs=(("Vehicle loan", 55), ("Installment loan", 22), ("Personal line of credit", 8),
              ("Vehicle lease", 8), ("Title loan", 5), ("Pawn loan", 2)),
        issues=(("Managing the loan or lease", 50, ()),
                ("Problems when you are unable to pay", 20, ()),
                ("Taking out the loan or lease", 18, ()),
                ("Shopping for a loan or lease", 5, ()),
                ("Payment to acct not credited", 4, ()), ("Account terms and changes", 3, ())),
        companies=AUTO_LENDERS + _scaled(BANKS, 0.2),
        responses=DEFAULT_RESPONSE_MIX,
    ),
    "Vehicle loan or lease": dict(
        weight=1.2, effect=0.05, scale=1000, noun="car loan",
        subs=(("Loan", 80), ("Lease", 15), ("Title loan", 5)),
        issues=(("Managing the loan or lease", 45, ()),
                ("Struggling to pay your loan", 20,
                 ("Denied request to lower payments", "Problem with additional add-on products")),
                ("Getting a loan or lease", 20, ()),
                ("Problems at the end of the loan or lease", 15,
                 ("Unable to receive car title or other documents", "Billing problems"))),
        companies=AUTO_LENDERS,
        responses=DEFAULT_RESPONSE_MIX,
    ),
    "Prepaid card": dict(
        weight=1.2, effect=-0.45, scale=100, noun="prepaid card",
        subs=(("General purpose card", 60), ("Payroll card", 10), ("Gift or merchant card", 12),
              ("Government benefit payment card", 10), ("ID prepaid card", 5),
              ("Transit card", 3)),
        issues=(("Managing, opening, or closing account", 40, ()), ("Fraud or scam", 20, ()),
                ("Unauthorized transactions/Trans. issues", 20, ()), ("Fees", 10, ()),
                ("Adding money", 6, ()), ("Advertising, marketing or disclosures", 4, ())),
        companies=PREPAID + _scaled(BANKS, 0.1),
        responses=(0.55, 0.15, 0.25, 0.03, 0.02),
    ),
    "Money transfers": dict(
        weight=1.0, effect=-0.2, scale=100, noun="money transfer",
        subs=(("Domestic (US) money transfer", 55), ("International money transfer", 45)),
        issues=(("Other transaction issues", 35, ()), ("Fraud or scam", 30, ()),
                ("Money was not available when promised", 15, ()),
                ("Wrong amount charged or received", 10, ()),
                ("Incorrect/missing disclosures or info", 6, ()),
                ("Incorrect exchange rate", 4, ())),
        companies=TRANSFERS + _scaled(BANKS, 0.2),
        responses=(0.6, 0.1, 0.25, 0.03, 0.02),
    ),
    "Payday loan": dict(
        weight=0.8, effect=0.1, scale=100, noun="payday loan", subs=(),
        issues=(("Charged fees or interest I didn't expect", 35, ()),
                ("Can't contact lender", 12, ()),
                ("Received a loan I didn't apply for", 10, ()),
                ("Payment to acct not credited", 13, ()),
                ("Can't stop charges to bank account", 20, ()),
                ("Applied for loan/did not receive money", 10, ())),
        companies=PAYDAY,
        responses=(0.6, 0.1, 0.15, 0.05, 0.1),
    ),
    "Other financial service": dict(
        weight=0.3, effect=-0.3, scale=100, noun="account",
        subs=(("Debt settlement", 40), ("Money order", 15), ("Check cashing", 15),
              ("Credit repair", 15), ("Foreign currency exchange", 5),
              ("Refund anticipation check", 5), ("Traveler's/Cashier's checks", 5)),
        issues=(("Fraud or scam", 30, ()), ("Customer service/Customer relations", 25, ()),
                ("Excessive fees", 15, ()), ("Unexpected/Other fees", 15, ()),
                ("Disclosures", 10, ()), ("Lost or stolen money order", 5, ())),
        companies=OTHER_SERVICES,
        responses=DEFAULT_RESPONSE_MIX,
    ),
}

ISSUE_EFFECT = {
    "Loan modification,collection,foreclosure": 0.4,
    "Loan servicing, payments, escrow account": 0.1,
    "Cont'd attempts collect debt not owed": 0.25,
    "Incorrect information on credit report": 0.2,
    "Credit reporting company's investigation": 0.45,
    "Dealing with my lender or servicer": 0.3,
    "Fraud or scam": 0.3,
    "Billing disputes": 0.15,
    "Taking/threatening an illegal action": 0.1,
    "Communication tactics": -0.35,
    "Improper contact or sharing of info": -0.2,
    "Rewards": -0.45,
    "Late fee": -0.3,
    "Unable to get credit report/credit score": -0.4,
    "Deposits and withdrawals": -0.15,
    "Customer service / Customer relations": -0.2,
    "Can't stop charges to bank account": 0.2,
}

# state: weight (roughly complaints per state), ZIP prefix range (first three digits)
STATES = {
    "CA": (150, 900, 961), "FL": (90, 320, 349), "TX": (75, 750, 799), "NY": (55, 100, 149),
    "GA": (40, 300, 319), "PA": (35, 150, 196), "IL": (32, 600, 629), "NJ": (30, 70, 89),
    "VA": (28, 220, 246), "NC": (28, 270, 289), "OH": (30, 430, 459), "MD": (25, 206, 219),
    "MI": (22, 480, 499), "AZ": (20, 850, 865), "WA": (18, 980, 994), "MA": (15, 10, 27),
    "TN": (15, 370, 385), "CO": (14, 800, 816), "NV": (12, 889, 898), "SC": (12, 290, 299),
    "MO": (12, 630, 658), "IN": (12, 460, 479), "MN": (10, 550, 567), "LA": (10, 700, 714),
    "WI": (9, 530, 549), "AL": (9, 350, 369), "OR": (9, 970, 979), "CT": (9, 60, 69),
    "KY": (7, 400, 427), "UT": (6, 840, 847), "OK": (6, 730, 749), "DC": (6, 200, 205),
    "MS": (5, 386, 397), "AR": (5, 716, 729), "KS": (5, 660, 679), "NM": (4, 870, 884),
    "DE": (4, 197, 199), "IA": (4, 500, 528), "NH": (3, 30, 38), "HI": (3, 967, 968),
    "NE": (3, 680, 693), "ID": (3, 832, 838), "WV": (2, 247, 268), "RI": (2, 28, 29),
    "ME": (2, 39, 49), "MT": (1.5, 590, 599), "VT": (1, 50, 59), "AK": (1, 995, 999),
    "SD": (1, 570, 577), "ND": (0.8, 580, 588), "WY": (0.8, 820, 831), "PR": (2, 6, 9),
    "AE": (0.8, 90, 98), "AP": (0.5, 962, 966), "AA": (0.2, 340, 340), "GU": (0.2, 969, 969),
    "VI": (0.2, 8, 8), "AS": (0.05, 967, 967), "MP": (0.05, 969, 969), "": (1.5, 0, 999),
}
STATE_EFFECT = {"FL": 0.2, "GA": 0.15, "TX": 0.1, "NY": -0.15, "IL": -0.1, "AE": 0.3, "AP": 0.3}

PUBLIC_RESPONSES = (
    ("", 55, 0.0),
    ("Company has responded to the consumer and the CFPB and chooses not to provide a public "
     "response", 25, 0.0),
    ("Company chooses not to provide a public response", 7, 0.0),
    ("Company believes it acted appropriately as authorized by contract or law", 7, 0.15),
    ("Company disputes the facts presented in the complaint", 1.5, 0.35),
    ("Company believes the complaint is the result of a misunderstanding", 1, 0.1),
    ("Company can't verify or dispute the facts in the complaint", 1, 0.0),
    ("Company believes complaint caused principally by actions of third party outside the "
     "control or direction of the company", 0.7, 0.1),
    ("Company believes complaint is the result of an isolated error", 0.5, -0.3),
    ("Company believes complaint represents an opportunity for improvement to better serve "
     "consumers", 0.5, -0.3),
    ("Company believes complaint relates to a discontinued policy or procedure", 0.2, 0.0),
)
CHANNELS = (("Web", 78, 0.0), ("Referral", 10, -0.15), ("Phone", 6.5, -0.2),
            ("Postal mail", 4, 0.0), ("Fax", 1.2, 0.15), ("Email", 0.3, 0.0))
WEB_CONSENT = (("Consent provided", 60), ("Consent not provided", 32), ("Other", 5), ("", 3))
OTHER_CONSENT = (("", 85), ("Other", 15))
TAGS = (("", 86), ("Older American", 8), ("Servicemember", 4.6),
        ("Older American, Servicemember", 1.4))
TAG_EFFECT = {"Older American": 0.1, "Servicemember": -0.1, "Older American, Servicemember": 0.0}
SEND_DELAYS = ((0, 35), (1, 20), (2, 10), (3, 10), (4, 5), (5, 5), (6, 3), (7, 3), (9, 3),
               (12, 2), (15, 2), (21, 1), (30, 1))

FRUSTRATION_WEIGHT = 1.2  # log-odds per unit of the hidden frustration value
# Multiplies every feature effect above. Tuned so a logistic regression on the columns and
# narrative words reaches an AUC of about 0.72, and even the true probabilities (which know
# the hidden frustration) only about 0.82: learnable, but noisy.
FEATURE_WEIGHT = 1.6

# --------------------------------------------------------------------------------------------
# Narrative vocabulary. Placeholders: {co} company reference, {a} large amount, {b} small
# amount, {sp} product noun, {iss} issue. Tone words ("ignored", "never", "still", "again",
# "lied" / "resolved", "thank", "helpful") occur only in the tone pools below.
# --------------------------------------------------------------------------------------------

OPENINGS = {
    "Mortgage": (
        "I have a {sp} with {co} and I am writing about {iss}.",
        "In XX/XX/XXXX I applied for a loan modification with {co}, my mortgage servicer.",
        "My mortgage was transferred to {co} on XX/XX/XXXX.",
        "We have been in our home since XXXX, and our loan is serviced by {co}.",
        "I am filing this complaint against {co} regarding my home loan.",
    ),
    "Debt collection": (
        "{co} has been trying to collect a debt of {a} that I do not owe.",
        "I received a letter from {co} dated XX/XX/XXXX about an account I do not recognize.",
        "A collection agency, {co}, has been calling me about a {sp} debt.",
        "On XX/XX/XXXX, {co} called my cell phone about a debt from XXXX.",
    ),
    "Credit reporting": (
        "There is incorrect information on my credit report from {co}.",
        "I disputed several accounts with {co} on XX/XX/XXXX.",
        "I pulled my credit report on XX/XX/XXXX and found accounts that are not mine.",
        "I am writing about {co} and how they handle disputes on my credit file.",
    ),
    "Credit card": (
        "I have a credit card with {co} that I have had since XXXX.",
        "On my {co} statement dated XX/XX/XXXX there is a charge of {b} that I did not make.",
        "I am complaining about {co} and {iss}.",
    ),
    "Bank account or service": (
        "I have a {sp} with {co}.",
        "On XX/XX/XXXX {co} placed a hold on my {sp}.",
        "I opened a {sp} at {co} in XXXX, and it was closed without warning.",
    ),
    "Student loan": (
        "My student loans are serviced by {co}.",
        "I have student loans with {co} totaling about {a}.",
        "I graduated in XXXX and started repayment with {co} on XX/XX/XXXX.",
    ),
    "Consumer Loan": (
        "I financed a vehicle through {co} in XXXX.",
        "I have a {sp} with {co}.",
        "My loan with {co} has a balance of {a}.",
    ),
    "Prepaid card": (
        "I purchased a {sp} from {co}.",
        "I have a prepaid card from {co} that I use for my paycheck.",
    ),
    "Money transfers": (
        "I sent {a} through {co} on XX/XX/XXXX.",
        "I used {co} to send money to my family in XXXX.",
    ),
    "Payday loan": (
        "I took out a payday loan of {b} from {co}.",
        "I have an online loan with {co} that I signed up for on XX/XX/XXXX.",
    ),
    "Other financial service": (
        "I enrolled in a debt settlement program with {co}.",
        "I bought a money order from {co} for {b} on XX/XX/XXXX.",
    ),
}
OPENINGS["Vehicle loan or lease"] = OPENINGS["Consumer Loan"]

DETAILS = {
    "Mortgage": (
        "My monthly payment went up by {b} because of an escrow shortage that I did not "
        "understand.",
        "I sent the complete package, including bank statements, pay stubs and tax returns, by "
        "certified mail.",
        "They said the documents were \"incomplete\" and asked for the same paperwork.",
        "The payoff statement showed {a}, which does not match my records.",
        "A foreclosure sale date was set for XX/XX/XXXX while my application was under review.",
        "The escrow account was charged {b} for force-placed insurance, even though my policy "
        "was active.",
        "My trial payments of {b} were made on time for three months.",
        "The single point of contact changed four times in six months.",
        "Late fees of {b} were added even though the payment was sent before the due date.",
        "The principal balance of {a} is higher than it was when the loan started.",
    ),
    "Debt collection": (
        "I asked them to send validation of the debt in writing, as the law allows.",
        "They call my phone up to five times a day, including at work.",
        "The original creditor was XXXX and the account was closed in XXXX.",
        "The amount they claim is {a}, but the original balance was only {b}.",
        "They told my sister about the debt, which is a violation of my privacy.",
        "The collector said I would be \"arrested\" if I did not pay {b} today.",
        "This account appears on my credit report as a collection, which lowers my score.",
        "I paid this account in full on XX/XX/XXXX and have the receipt.",
        "The debt is over seven years old and past the statute of limitations in my state.",
        "They would not give me the name of the original creditor or an account number.",
    ),
    "Credit reporting": (
        "The account XXXX XXXX is reported as 30 days late, but I paid on time every month.",
        "My address and employer are listed incorrectly, and there is a name I do not know.",
        "I mailed a dispute letter with a copy of my ID and a utility bill.",
        "The inquiry from XXXX on XX/XX/XXXX was not authorized by me.",
        "A balance of {a} is shown for an account that was closed with a zero balance.",
        "My score dropped more than 100 points because of this entry.",
        "The dispute result said the information was \"verified\", without any explanation of "
        "how.",
        "I was denied a car loan on XX/XX/XXXX because of this report.",
        "The account belongs to someone with a similar name, XXXX XXXX.",
    ),
    "Credit card": (
        "I disputed the charge with the merchant and with the card issuer within 60 days.",
        "My interest rate was raised to 29.99 % without notice.",
        "A late fee of {b} was charged even though I paid online on the due date.",
        "My credit limit was cut from {a} to the current balance, which hurt my utilization.",
        "The rewards points I earned, about XXXX points, were taken away when the account was "
        "closed.",
        "I asked for the account to be closed, but it remains open with an annual fee of {b}.",
        "The balance transfer offer said 0 % for 18 months, but interest was charged from the "
        "start.",
        "Someone used my card number at XXXX for {b} on XX/XX/XXXX.",
    ),
    "Bank account or service": (
        "They charged overdraft fees of {b} each for transactions that were authorized when my "
        "balance was positive.",
        "A deposit of {a} was not credited to my account for ten business days.",
        "My debit card was declined at XXXX even though I had funds available.",
        "The branch told me to call the phone line, and the phone line told me to go to the "
        "branch.",
        "They closed my account and kept a balance of {a} without explanation.",
        "A check I deposited on XX/XX/XXXX was returned, and they charged me {b}.",
        "I was told the bonus of {b} would be paid after 60 days, but it was not paid.",
    ),
    "Student loan": (
        "I applied for an income-driven repayment plan and sent my tax return.",
        "My payments of {b} were applied to the wrong loans, with more going to interest.",
        "They put my loans in forbearance without asking me, and the interest was capitalized.",
        "I qualify for Public Service Loan Forgiveness, but my qualifying payments were counted "
        "wrong.",
        "My cosigner was contacted even though my account is current.",
        "The servicer told me that extra payments would \"advance the due date\" instead of "
        "lowering the principal.",
    ),
    "Consumer Loan": (
        "They repossessed my car on XX/XX/XXXX even though I had made a payment arrangement.",
        "The GAP insurance refund of {b} was not applied after the payoff.",
        "My payment was received on time, but it was posted three days later with a late fee "
        "of {b}.",
        "The dealer added a warranty for {b} that I did not agree to.",
        "The interest rate on the contract is different from the rate I was quoted.",
        "At the end of the lease they charged {a} for excess wear, which I dispute.",
    ),
    "Prepaid card": (
        "The card was frozen with {a} on it, and I cannot access my money.",
        "There are monthly fees of {b} that were not disclosed when I bought the card.",
        "Someone made unauthorized transactions for {b} on XX/XX/XXXX.",
        "They asked me to send a copy of my ID and Social Security card to unlock the account.",
    ),
    "Money transfers": (
        "The recipient did not receive the money, and the transfer shows as completed.",
        "The exchange rate used was not the rate shown when I sent the transfer.",
        "I was the victim of a scam and asked {co} to stop the transfer within 30 minutes.",
        "The fee was {b}, which is more than what was disclosed.",
    ),
    "Payday loan": (
        "They withdraw {b} from my bank account every two weeks, and the balance does not go "
        "down.",
        "I revoked the ACH authorization in writing, but the withdrawals continue.",
        "The total I have paid so far is {a}, on a loan of {b}.",
        "The interest rate is over 300 %, which is not legal in my state.",
    ),
    "Other financial service": (
        "They charged {b} in fees before settling any debt.",
        "The money order was cashed by someone else, and they will not refund it.",
        "They promised to improve my credit score within 90 days.",
    ),
}
DETAILS["Vehicle loan or lease"] = DETAILS["Consumer Loan"]

GENERIC_DETAILS = (
    "I called {co} on XX/XX/XXXX and spoke with a representative named XXXX.",
    "I have attached copies of my letters, my bank statements and the receipts.",
    "The representative said, \"There is nothing we can do about it.\"",
    "I sent a letter by certified mail on XX/XX/XXXX, tracking number XXXX.",
    "This has caused a lot of stress for me and my family, and it has affected my credit.",
    "I was told that a supervisor would call me within 48 hours.",
    "My account number is XXXX and the reference number for my call is XXXX.",
    "I do not think this is fair, and I believe it violates the law.",
    "The total amount in question is {a}.",
    "On XX/XX/XXXX I received a letter that contradicts what I was told on the phone.",
    "I have been a customer for over XXXX years and have always paid my bills.",
    "They asked me to fax the documents, and I faxed them on XX/XX/XXXX.",
    "The letter was dated XX/XX/XXXX but arrived on XX/XX/XXXX, after the deadline.",
    "I am a single parent, and an extra {b} a month makes a big difference for us.",
    "Their website showed a different amount than the monthly statement.",
    "I don\u2019t understand why this is so hard.",
    "My complaint is about {iss}.",
    "Their response letter said they had \"reviewed the account\" and found no errors.",
    "I asked for a copy of the contract, the payment history and the notes on my account.",
)
ANGRY = (
    "They ignored every letter I sent.",
    "I have never received a written response from {co}.",
    "The problem is still not fixed, months later.",
    "I called again and again, and every time I was told something different.",
    "The representative lied to me about the status of my account.",
    "They ignored my requests for documentation.",
    "Nobody called me back, and I was transferred again to a different department.",
    "This is the third time I have complained about the same issue, and it is still happening.",
    "They lied about sending the letter, because it never arrived.",
    "I feel completely ignored, and it seems like they never read what I send.",
    "Their so-called \"investigation\" was a joke, and the same error is still on my account.",
    "I was promised a call back within 48 hours, which never happened.",
    "Once again they sent a form letter that did not address anything.",
    "I am being harassed, lied to and ignored.",
)
CALM = (
    "The representative I spoke to on XX/XX/XXXX was helpful and explained the next steps.",
    "Thank you for looking into this.",
    "Part of the issue has been resolved, and I appreciate that.",
    "Thank you in advance for your help.",
    "To be fair, the last agent was helpful and polite.",
    "The branch manager was very helpful, but I need a written confirmation.",
    "I hope this can be resolved quickly, and I thank the CFPB for its assistance.",
)
CLOSINGS = (
    "Please help me.",
    "I am asking the CFPB to look into this.",
    "I want {co} to correct the error and refund {b}.",
    "I would like the account removed from my credit report.",
    "Please make them stop contacting me.",
    "I want a written explanation and a corrected statement.",
    "I am asking for the fees to be reversed.",
)
AMOUNT_DIGITS = (2, 3, 3, 4)  # digits of a "small" amount; large amounts get one more

# --------------------------------------------------------------------------------------------
# Compiled tables: cumulative weights for one `random()` draw per pick.
# --------------------------------------------------------------------------------------------


class _Choice:
    """Pick a value with one uniform draw; fast and identical on every platform."""

    __slots__ = ("values", "cum")

    def __init__(self, pairs) -> None:
        pairs = [(value, float(weight)) for value, weight in pairs if weight > 0]
        total = sum(weight for _, weight in pairs)
        running = 0.0
        self.cum: list[float] = []
        for _, weight in pairs:
            running += weight
            self.cum.append(running / total)
        self.cum[-1] = 1.0  # u < 1.0 always lands on an index
        self.values = [value for value, _ in pairs]

    def __call__(self, u: float):
        return self.values[bisect_right(self.cum, u)]


def _declining(values) -> list[tuple[str, float]]:
    """Weights 1, 1/2, 1/3 ... so the first listed value is the most common."""
    return [(value, 1.0 / (rank + 1)) for rank, value in enumerate(values)]


def _noun(sub_product: str, fallback: str) -> str:
    """How a narrative names the sub-product ("FHA mortgage", "checking account")."""
    if "(" in sub_product or sub_product.startswith(("Other", "I do", "Cashing")):
        return fallback
    if sub_product[1:2].islower():
        return sub_product[0].lower() + sub_product[1:]
    return sub_product


class _Product:
    __slots__ = ("name", "effect", "scale", "noun", "sub", "nouns", "issue", "company",
                 "response", "openings", "details")

    def __init__(self, name: str, spec: dict) -> None:
        self.name = name
        self.effect = spec["effect"]
        self.scale = spec["scale"]
        self.noun = spec["noun"]
        self.sub = _Choice(spec["subs"]) if spec["subs"] else None
        self.nouns = {sub: _noun(sub, self.noun) for sub, _ in spec["subs"]}
        self.nouns[""] = self.noun
        self.issue = _Choice(
            ((issue, _Choice(_declining(subs)) if subs else None), weight)
            for issue, weight, subs in spec["issues"]
        )
        merged: dict[str, float] = {}
        for company, weight in spec["companies"]:
            merged[company] = merged.get(company, 0.0) + weight
        self.company = _Choice(merged.items())
        self.response = _Choice(zip(RESPONSE_EFFECT, spec["responses"], strict=True))
        self.openings = OPENINGS[name]
        self.details = DETAILS[name] + GENERIC_DETAILS


_PRODUCT = _Choice((_Product(name, spec), spec["weight"]) for name, spec in PRODUCTS.items())
_STATE = _Choice(((state, low, high), spec_weight)
                 for state, (spec_weight, low, high) in STATES.items())
_PUBLIC = _Choice(((text, effect), weight) for text, weight, effect in PUBLIC_RESPONSES)
_CHANNEL = _Choice(((via, effect), weight) for via, weight, effect in CHANNELS)
_WEB_CONSENT = _Choice(WEB_CONSENT)
_OTHER_CONSENT = _Choice(OTHER_CONSENT)
_TAGS = _Choice(TAGS)
_DELAY = _Choice(SEND_DELAYS)
_COMPANY_REF = _Choice((("XXXX", 45), (None, 35), ("the company", 10), ("XXXX XXXX", 10)))

_SPAN_DAYS = (LAST_DATE - FIRST_DATE).days + 1
_MAX_DELAY = max(delay for delay, _ in SEND_DELAYS)
_DAYS = [(FIRST_DATE + timedelta(days=i)).isoformat() for i in range(_SPAN_DAYS + _MAX_DELAY)]

# --------------------------------------------------------------------------------------------
# Drawing one complaint
# --------------------------------------------------------------------------------------------


def _draw_case(rand: Callable[[], float], label_blank: bool) -> tuple:
    """Draw every structured field and the feature part of the dispute log-odds.

    Shared by generation and intercept calibration, so both see the same distribution.
    """
    product = _PRODUCT(rand())
    sub_product = product.sub(rand()) if product.sub else ""
    issue, sub_issue_choice = product.issue(rand())
    sub_issue = ""
    if sub_issue_choice is not None and rand() < 0.9:
        sub_issue = sub_issue_choice(rand())
    company = product.company(rand())
    state, zip_low, zip_high = _STATE(rand())
    via, via_effect = _CHANNEL(rand())
    consent = _WEB_CONSENT(rand()) if via == "Web" else _OTHER_CONSENT(rand())
    tags = _TAGS(rand())
    # "In progress" means the company has not answered yet, so the dispute is still unknown.
    response = IN_PROGRESS if label_blank and rand() < 0.45 else product.response(rand())
    timely = "No" if response == UNTIMELY or rand() < 0.02 else "Yes"
    public, public_effect = ("", 0.0) if response == IN_PROGRESS else _PUBLIC(rand())
    score = FEATURE_WEIGHT * (
        product.effect
        + RESPONSE_EFFECT.get(response, 0.0)
        + ISSUE_EFFECT.get(issue, 0.0)
        + COMPANY_EFFECT.get(company, 0.0)
        + STATE_EFFECT.get(state, 0.0)
        + TAG_EFFECT.get(tags, 0.0)
        + via_effect
        + public_effect
        + (-0.4 if timely == "No" and response != UNTIMELY else 0.0)
    )
    return (product, sub_product, issue, sub_issue, company, state, zip_low, zip_high, via,
            consent, tags, response, timely, public, score)


def _frustration(rand: Callable[[], float]) -> float:
    """A hidden N(0, 1)-like value (sum of three uniforms, scaled): no libm, same everywhere."""
    return (rand() + rand() + rand() - 1.5) * 2.0


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@functools.lru_cache(maxsize=64)
def dispute_intercept(disputed_rate: float, sample_size: int = 40_000) -> float:
    """The log-odds offset that makes the mean dispute probability equal `disputed_rate`.

    Solved by Newton's method on a fixed calibration sample (its own seed), so the offset
    depends only on the requested rate and is the same for every seed and machine.
    """
    if not 0.0 < disputed_rate < 1.0:
        raise ValueError(f"disputed_rate must be in (0, 1), got {disputed_rate}")
    rand = random.Random(20170424).random
    scores = []
    for _ in range(sample_size):
        case = _draw_case(rand, label_blank=False)
        scores.append(case[-1] + FRUSTRATION_WEIGHT * _frustration(rand))
    offset = math.log(disputed_rate / (1.0 - disputed_rate)) - sum(scores) / len(scores)
    for _ in range(50):
        probs = [_sigmoid(offset + s) for s in scores]
        gap = sum(probs) / len(probs) - disputed_rate
        slope = sum(p * (1.0 - p) for p in probs) / len(probs)
        step = gap / slope
        offset -= step
        if abs(step) < 1e-10:
            break
    return offset


def _money(rand: Callable[[], float], digits: int) -> str:
    dollars = int(10 ** (digits - 1) * (1.0 + 9.0 * rand()))
    cents = 0 if rand() < 0.6 else int(rand() * 100)
    return "{$" + f"{dollars}.{cents:02d}" + "}"


def _narrative(rand: Callable[[], float], product: _Product, sub_product: str, issue: str,
               company: str, frustration: float) -> str:
    """Several product-specific sentences whose tone follows the hidden frustration."""
    ref = _COMPANY_REF(rand()) or company
    extra = 1 if product.scale >= 1000 else 0
    small_digits = AMOUNT_DIGITS[int(rand() * len(AMOUNT_DIGITS))]
    fields = {
        "co": ref,
        "a": _money(rand, small_digits + 1 + extra),
        "b": _money(rand, small_digits + extra),
        "sp": product.nouns[sub_product],
        "iss": issue.lower(),
    }
    angry_p = min(0.9, max(0.02, 0.25 + 0.3 * frustration))
    calm_p = min(0.8, max(0.02, 0.2 - 0.2 * frustration))
    u = rand()
    if u < 0.08:
        body = 0  # a one-sentence narrative
    elif u < 0.97:
        body = 1 + int(14.0 * rand() ** 2)
    else:
        body = 15 + int(45.0 * rand())  # the long tail: a few thousand characters

    openings, details = product.openings, product.details
    sentences = [openings[int(rand() * len(openings))]]
    used: set[int] = set()
    for index in range(body):
        pick = int(rand() * len(details))
        if pick in used:  # one retry keeps repeats rare without a costly shuffle
            pick = int(rand() * len(details))
        used.add(pick)
        sentences.append(details[pick])
        if index % 3 == 0:
            if rand() < angry_p:
                sentences.append(ANGRY[int(rand() * len(ANGRY))])
            if rand() < calm_p:
                sentences.append(CALM[int(rand() * len(CALM))])
    if body and rand() < 0.7:
        sentences.append(CLOSINGS[int(rand() * len(CLOSINGS))])
    sentences = [sentence.format_map(fields) for sentence in sentences]

    if len(sentences) > 2 and rand() < 0.45:
        separator = "\n\n" if rand() < 0.6 else "\n"
        paragraphs, start = [], 0
        while start < len(sentences):
            size = 2 + int(rand() * 3)
            paragraphs.append(" ".join(sentences[start:start + size]))
            start += size
        text = separator.join(paragraphs)
    else:
        text = " ".join(sentences)
    if rand() < 0.02:
        text = text.upper()  # some consumers write in capitals
    return text


def _zip_code(rand: Callable[[], float], low: int, high: int, has_narrative: bool) -> str:
    u = rand()
    if u < 0.03:
        return ""
    prefix = low + int(rand() * (high - low + 1))
    if rand() < (0.6 if has_narrative else 0.05):
        return f"{prefix:03d}XX"  # masked as in the public database
    zip5 = f"{prefix:03d}{int(rand() * 100):02d}"
    if u > 0.97:
        return f"{zip5}-{int(rand() * 10_000):04d}"
    return zip5


def _iter_rows(rows: int, seed: int, disputed_rate: float,
               blank_label_rate: float) -> Iterator[tuple]:
    """Check the arguments now (not at the first row), then return the row tuple stream."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if not 0.0 <= blank_label_rate < 1.0:
        raise ValueError(f"blank_label_rate must be in [0, 1), got {blank_label_rate}")
    offset = dispute_intercept(disputed_rate)
    return _generate_rows(rows, seed, offset, blank_label_rate)


def _generate_rows(rows: int, seed: int, offset: float,
                   blank_label_rate: float) -> Iterator[tuple]:
    """Yield complaint rows as tuples in HEADER order (the fast path for writing)."""
    rand = random.Random(seed).random
    complaint_id = 1_100_000 + int(rand() * 400_000)
    days = _DAYS
    recent = 120  # blank labels are mostly recent: the dispute window was still open
    for _ in range(rows):
        label_blank = rand() < blank_label_rate
        (product, sub_product, issue, sub_issue, company, state, zip_low, zip_high, via,
         consent, tags, response, timely, public, score) = _draw_case(rand, label_blank)
        frustration = _frustration(rand)
        has_narrative = consent == "Consent provided"
        narrative = (
            _narrative(rand, product, sub_product, issue, company, frustration)
            if has_narrative else ""
        )
        zip_code = "" if not state and rand() < 0.8 else _zip_code(rand, zip_low, zip_high,
                                                                    has_narrative)
        if label_blank and rand() < 0.7:
            day = _SPAN_DAYS - 1 - int(rand() * recent)
        else:
            day = int(_SPAN_DAYS * (rand() if rand() < 0.5 else rand() ** 0.5))
        sent = day + _DELAY(rand())
        u = rand()  # drawn for every row so the stream does not depend on the rate
        if label_blank:
            disputed = ""
        else:
            disputed = "Yes" if u < _sigmoid(offset + score + FRUSTRATION_WEIGHT * frustration) \
                else "No"
        complaint_id += 1 + int(rand() ** 4 * 8)
        yield (days[day], product.name, sub_product, issue, sub_issue, narrative, public,
               company, state, zip_code, tags, consent, via, days[sent], response, timely,
               disputed, str(complaint_id))


def iter_complaints(rows: int, seed: int, disputed_rate: float = DEFAULT_DISPUTED_RATE,
                    blank_label_rate: float = DEFAULT_BLANK_LABEL_RATE) -> Iterator[dict]:
    """Complaints as dicts keyed by the official header names, the same rows the CSV holds."""
    row_tuples = _iter_rows(rows, seed, disputed_rate, blank_label_rate)
    return (dict(zip(HEADER, row, strict=True)) for row in row_tuples)


def write_complaints(out: str | os.PathLike | TextIO, rows: int, seed: int,
                     disputed_rate: float = DEFAULT_DISPUTED_RATE,
                     blank_label_rate: float = DEFAULT_BLANK_LABEL_RATE,
                     on_progress: Callable[[int], None] | None = None,
                     progress_every: int = 100_000) -> int:
    """Stream `rows` complaints as an official-format CSV; return the number of rows written.

    A path is written through a `.part` file and renamed at the end, so a crash never leaves
    a truncated file that looks finished. A text file is written as is (open it with
    newline="" and UTF-8). `on_progress(rows_done)` is called every `progress_every` rows.
    """
    rows_iter = _iter_rows(rows, seed, disputed_rate, blank_label_rate)  # validates arguments
    if hasattr(out, "write"):
        return _write(out, rows_iter, on_progress, progress_every)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            written = _write(handle, rows_iter, on_progress, progress_every)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return written


def _write(handle: TextIO, rows_iter: Iterator[tuple], on_progress: Callable[[int], None] | None,
           progress_every: int) -> int:
    writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(HEADER)
    written = 0
    next_report = progress_every
    batch: list[tuple] = []
    for row in rows_iter:
        batch.append(row)
        if len(batch) == 1000:
            writer.writerows(batch)
            written += len(batch)
            batch.clear()
            if on_progress is not None and written >= next_report:
                on_progress(written)
                next_report += progress_every
    writer.writerows(batch)
    written += len(batch)
    return written
