// Start a staffwork session and print its result (nats.go). The team is incident unless named:
//
//	go mod init submit && go get github.com/nats-io/nats.go
//	STAFFWORK_NATS_URL=nats://127.0.0.1:4222 go run submit.go [team]
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

type errorInfo struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

type submitReply struct {
	SessionID     string     `json:"session_id"`
	Accepted      bool       `json:"accepted"`
	Error         *errorInfo `json:"error"`
	Warnings      []string   `json:"warnings"`
	ResultSubject string     `json:"result_subject"`
}

type sessionResult struct {
	Status    string     `json:"status"`
	FinalText string     `json:"final_text"`
	Error     *errorInfo `json:"error"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	team := "incident"
	if len(os.Args) > 1 {
		team = os.Args[1]
	}
	url := os.Getenv("STAFFWORK_NATS_URL")
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()

	request, err := json.Marshal(map[string]string{
		"type": "session.submit.v1", "task": "Why did checkout fail?", "team": team,
	})
	if err != nil {
		return err
	}
	msg, err := nc.Request("sw.api.submit", request, 10*time.Second)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	var reply submitReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return fmt.Errorf("submit reply: %w", err)
	}
	if !reply.Accepted {
		return fmt.Errorf("refused: %s: %s", reply.Error.Kind, reply.Error.Message)
	}
	for _, warning := range reply.Warnings {
		fmt.Fprintln(os.Stderr, "warning:", warning)
	}

	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	// An ordered consumer: it also replays a result stored before it started.
	sub, err := js.SubscribeSync(reply.ResultSubject, nats.OrderedConsumer())
	if err != nil {
		return err
	}
	msg, err = sub.NextMsg(10 * time.Minute)
	if errors.Is(err, nats.ErrTimeout) {
		return fmt.Errorf("no result for session %s within 10 minutes", reply.SessionID)
	}
	if err != nil {
		return err
	}
	var result sessionResult
	if err := json.Unmarshal(msg.Data, &result); err != nil {
		return fmt.Errorf("session result: %w", err)
	}
	fmt.Printf("session %s: %s\n%s\n", reply.SessionID, result.Status, result.FinalText)
	if result.Error != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", result.Error.Kind, result.Error.Message)
	}
	if result.Status != "idle" {
		return fmt.Errorf("session %s ended %s", reply.SessionID, result.Status)
	}
	return nil
}
