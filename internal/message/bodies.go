package message

// Body is a message body: it knows its own type, so a sender never names
// it separately (and cannot name the wrong one).
type Body interface{ Type() Type }

// Each body's type (see the Type constants for the wire numbers).

func (EnrolRequest) Type() Type    { return TypeEnrolRequest }
func (EnrolReply) Type() Type      { return TypeEnrolReply }
func (Hello) Type() Type           { return TypeHello }
func (Welcome) Type() Type         { return TypeWelcome }
func (Refused) Type() Type         { return TypeRefused }
func (Challenge) Type() Type       { return TypeChallenge }
func (ChallengeAnswer) Type() Type { return TypeChallengeAnswer }
func (TimeRequest) Type() Type     { return TypeTimeRequest }
func (TimeReply) Type() Type       { return TypeTimeReply }
func (EnrolAck) Type() Type        { return TypeEnrolAck }
func (Report) Type() Type          { return TypeReport }
func (Action) Type() Type          { return TypeAction }
func (ActionResult) Type() Type    { return TypeActionResult }
func (Policy) Type() Type          { return TypePolicy }
func (PolicyAck) Type() Type       { return TypePolicyAck }
func (Event) Type() Type           { return TypeEvent }
func (EventAck) Type() Type        { return TypeEventAck }
func (BoardPost) Type() Type       { return TypeBoardPost }
func (BoardEntry) Type() Type      { return TypeBoardEntry }
func (BoardRead) Type() Type       { return TypeBoardRead }
func (PeerHello) Type() Type       { return TypePeerHello }
