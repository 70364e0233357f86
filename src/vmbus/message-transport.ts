// How channel messages travel: HvPostMessage connection ids guest to host, the SynIC
// message type and SINT host to guest, and the relid range both sides accept.

/** HvPostMessage connection id for channel messages (and INITIATE_CONTACT below 5.0). */
export const MESSAGE_CONNECTION_ID = 1;
/** INITIATE_CONTACT from version 5.0 on. */
export const MESSAGE_CONNECTION_ID_4 = 4;
/** The HV message type of VMBus channel messages, both directions. */
export const VMBUS_MESSAGE_TYPE = 1;
/** The SINT Linux uses for VMBus messages and channel events. */
export const VMBUS_MESSAGE_SINT = 2;
/** Linux sizes its relid table to 2048 entries; relid 0 is the control connection. */
export const MAX_RELID = 2047;
