// Send one message with nodemailer, as an agent would; print the outcome as JSON.
// Settings from the environment: SMTP_PORT, SMTP_USER, SMTP_KEY, AUTH_TYPE
// ("login": user and password; "oauth2": the key as the access token).
"use strict";
const nodemailer = require("nodemailer");

const env = process.env;
const auth =
  env.AUTH_TYPE === "oauth2"
    ? { type: "OAuth2", user: env.SMTP_USER, accessToken: env.SMTP_KEY }
    : { user: env.SMTP_USER, pass: env.SMTP_KEY };
const transport = nodemailer.createTransport({
  host: "127.0.0.1",
  port: Number(env.SMTP_PORT),
  secure: false,
  ignoreTLS: true,
  auth,
});
transport
  .sendMail({
    from: env.MAIL_FROM,
    to: "someone@example.com",
    subject: "from nodemailer",
    text: "hello",
  })
  .then((info) => console.log(JSON.stringify({ ok: true, response: info.response })))
  .catch((error) =>
    console.log(JSON.stringify({ ok: false, code: error.responseCode || null, response: error.response || error.code })),
  );
