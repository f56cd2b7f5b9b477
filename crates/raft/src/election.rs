//! Leader election (paper section 5.2), PreVote (thesis 9.6) and leadership transfer (thesis
//! 3.10).

use crate::membership::VoteResult;
use crate::message::{MessageBody, RequestVote, RequestVoteResponse};
use crate::raft::{Campaign, Raft};
use crate::types::{NodeId, Role, Term};

impl Raft {
    /// Starts a campaign. A pre-vote asks "would you vote for me in term + 1?" without changing
    /// any state, so a server cut off from the cluster cannot inflate terms (thesis 9.6).
    pub(crate) fn campaign(&mut self, kind: Campaign) {
        let term = match kind {
            Campaign::PreVote => {
                self.role = Role::PreCandidate;
                self.leader_id = None;
                self.leave_leadership();
                self.current_term + 1
            }
            Campaign::Election | Campaign::Transfer => {
                // Section 5.2: increment the term, vote for self. The vote is persisted in the
                // next Ready before any RequestVote leaves (RequestVote is a gated message).
                self.current_term += 1;
                self.voted_for = Some(self.config.id);
                self.role = Role::Candidate;
                self.leader_id = None;
                self.leave_leadership();
                self.current_term
            }
        };
        self.reset_timers();
        self.votes.insert(self.config.id, true);
        if self.tally_votes() {
            return;
        }
        let request = RequestVote {
            pre_vote: kind == Campaign::PreVote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer: kind == Campaign::Transfer,
        };
        let me = self.config.id;
        let voters: Vec<NodeId> = self
            .membership
            .members()
            .into_iter()
            .filter(|&id| id != me && self.membership.is_voter(id))
            .collect();
        for id in voters {
            self.send_with_term(id, term, MessageBody::RequestVote(request.clone()));
        }
    }

    /// Section 5.2 and 5.4.1: grant at most one vote per term, and only to a candidate whose
    /// log is at least as up-to-date as ours. Pre-votes follow the same rules but change nothing.
    pub(crate) fn handle_request_vote(&mut self, from: NodeId, term: Term, rv: RequestVote) {
        let can_vote = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.leader_id.is_none())
            || (rv.pre_vote && term > self.current_term);
        let grant = can_vote && self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
        let response = RequestVoteResponse { pre_vote: rv.pre_vote, vote_granted: grant };
        if grant && !rv.pre_vote {
            self.voted_for = Some(from);
            self.election_elapsed_ticks = 0;
        }
        // A granted pre-vote answers in the term asked about, so the pre-candidate does not
        // mistake it for a newer term; everything else answers in our own term.
        let reply_term = if grant && rv.pre_vote { term } else { self.current_term };
        self.send_with_term(from, reply_term, MessageBody::RequestVoteResponse(response));
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, term: Term, r: RequestVoteResponse) {
        let counts = match self.role {
            // A granted pre-vote answers "term + 1" of this round; anything else is stale.
            Role::PreCandidate => r.pre_vote && (!r.vote_granted || term == self.current_term + 1),
            Role::Candidate => !r.pre_vote && term == self.current_term,
            Role::Follower | Role::Leader => false,
        };
        if counts && self.membership.is_voter(from) {
            self.votes.insert(from, r.vote_granted);
            self.tally_votes();
        }
    }

    /// Acts on the votes so far. Returns whether the campaign ended.
    fn tally_votes(&mut self) -> bool {
        let votes = &self.votes;
        match self.membership.vote_result(|id| votes.get(&id).copied()) {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(Campaign::Election);
                } else {
                    self.become_leader();
                }
                true
            }
            VoteResult::Lost => {
                let term = self.current_term;
                self.become_follower(term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    /// Thesis 3.10: once the successor's log matches ours, tell it to campaign now.
    pub(crate) fn continue_transfer(&mut self, to: NodeId) {
        let caught_up = self.progress.get(&to).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            // Voters will ignore our lease for the successor's election: stop lease reads.
            self.lease_revoked = true;
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to);
        }
    }
}
